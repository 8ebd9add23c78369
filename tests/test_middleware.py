"""File responses inside middleware: sent zero-copy when every wrapper adds nothing.

End to end: ``middleware_apps`` puts chains of middleware (``wsgiref.validate``,
Werkzeug's ``ClosingIterator``, a wrapper following the ``wsgi_file_wrapped``
protocol, and wrappers that cannot be seen through) around a plain file
application and around Flask's ``send_file``, and every fastwrap WSGI server
(the stdlib server with ``install()``, ``make_server``, gunicorn's sync and
gthread workers, gevent) serves them in a child process, once per engine.
A client on 127.0.0.1 checks the bytes; the server's ``fastwrap.stats()``
shows whether they left by sendfile; the server's record of ``close()`` calls
shows each layer and the file closed exactly once, in the order plain
iteration closes them, also when the client leaves mid-body or the file
comes up short.

The rule itself (what :func:`fastwrap.serving.unwrap` sees through, and what
not) is checked directly too, with both engines' FileWrappers.
"""
from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path
import socket
import struct
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from wsgiref import util, validate

import pytest

import fastwrap
from fastwrap import serving

from _serve_gevent import serve_gevent
from _serve_gunicorn import serve_gunicorn
from _serve_wsgiref import serve_wsgiref
from _servers import get_stats
from _support import HANG, random_bytes, recv_until_eof
from conftest import import_compiled_engine
from e2e_launchers import UNSUPPORTED, serving_root

APP = "middleware_apps:app"
BIG = "big.bin"
BIG_SIZE = 2 * 1024 * 1024 + 4321
HUGE = "huge.bin"
HUGE_SIZE = 64 * 1024 * 1024  # the server is mid-file when the client leaves

LAUNCHERS: Dict[str, Callable[[Dict[str, str]], Any]] = {
    "wsgiref-installed": lambda env: serve_wsgiref("wsgiref-installed", APP, env),
    "make_server": lambda env: serve_wsgiref("make_server", APP, env),
    "gunicorn-sync": lambda env: serve_gunicorn(APP, worker="sync", env=env),
    "gunicorn-gthread": lambda env: serve_gunicorn(APP, worker="gthread", env=env),
    "gevent": lambda env: serve_gevent(APP, env=env),
}
ENGINES = {"cython": "0", "python": "1"}  # FASTWRAP_NO_EXTENSIONS

#: Chains (innermost first) that fastwrap sees through: the file leaves zero-copy.
TRANSPARENT = [
    "validate",
    "closing",
    "transparent",
    "validate,validate",
    "validate,closing,transparent",
    "transparent,validate,closing,transparent",
]
#: Chains it must not see through: the body is iterated, as without fastwrap.
OPAQUE = [
    "opaque",                 # delegates, but does not say so
    "gzip",                   # changes the bytes
    "transparent,gzip",       # a transforming wrapper outside a transparent one
    "gzip,transparent",       # ... and inside one
    "opaque,validate",        # validate around a wrapper whose iter() is another object
]


# -- servers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, bytes]]:
    directory = tmp_path_factory.mktemp("middleware-root")
    data = random_bytes(BIG_SIZE, seed=77)
    (directory / BIG).write_bytes(data)
    with open(directory / HUGE, "wb") as f:
        f.truncate(HUGE_SIZE)  # sparse: a big file that costs no disk
    with serving_root(directory):
        yield {BIG: data}


class Server:
    def __init__(self, url: str, launcher: str) -> None:
        self.url = url
        self.launcher = launcher
        self.port = int(url.rsplit(":", 1)[1])

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=HANG)

    def get(self, path: str, headers: Optional[Dict[str, str]] = None,
            method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        finally:
            conn.close()

    def stats(self) -> Dict[str, Dict[str, int]]:
        return get_stats(self.url)

    def implementation(self) -> str:
        status, _, body = self.get("/__stats__")
        assert status == 200
        return str(json.loads(body)["implementation"])

    def closes(self, request_id: str, count: int) -> List[str]:
        """The close() calls recorded for *request_id*, once *count* of them are in.

        The server closes a response after its last byte left, so the client
        may be ahead: wait for the record, then read it once more after the
        server has answered another request, so a late second close shows.
        """
        deadline = time.monotonic() + HANG
        while True:
            recorded = self._closes(request_id)
            if len(recorded) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.stats()
        time.sleep(0.05)
        return self._closes(request_id)

    def _closes(self, request_id: str) -> List[str]:
        status, _, body = self.get(f"/__closes__?id={request_id}")
        assert status == 200
        return list(json.loads(body))

    def sent_since(self, before: Dict[str, Dict[str, int]],
                   transmissions: int) -> Dict[str, Dict[str, int]]:
        """Per path, what fastwrap sent since *before*, once *transmissions* ended."""
        deadline = time.monotonic() + HANG
        while True:
            after = self.stats()
            done = sum(after[p]["transmissions"] - before[p]["transmissions"] for p in after)
            if done >= transmissions or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return {path: {key: after[path][key] - before[path][key] for key in after[path]}
                for path in after}


@pytest.fixture(scope="module", params=[(launcher, engine) for launcher in LAUNCHERS
                                        for engine in ENGINES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def server(request: pytest.FixtureRequest, files: Dict[str, bytes]) -> Iterator[Server]:
    launcher, engine = request.param
    if launcher in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[launcher])
    if engine == "cython" and import_compiled_engine() is None:
        pytest.skip("compiled engine not built")
    with LAUNCHERS[launcher]({"FASTWRAP_NO_EXTENSIONS": ENGINES[engine]}) as url:
        made = Server(str(url), launcher)
        assert made.implementation() == engine
        yield made


# -- what to expect -------------------------------------------------------------------------

def new_id() -> str:
    return uuid.uuid4().hex


def expected_closes(chain: str) -> List[str]:
    """The close() calls plain iteration makes: each wrapper closes what it wraps.

    validate and the protocol wrapper record before closing what they wrap;
    ClosingIterator closes what it wraps first, then its own callback.
    """
    events = ["file"]
    for index, kind in enumerate(k for k in chain.split(",") if k):
        name = f"{kind}#{index}"
        events = events + [name] if kind == "closing" else [name] + events
    return events


def layer_headers(chain: str) -> Dict[str, str]:
    return {f"x-layer-{i}": kind for i, kind in enumerate(chain.split(","))
            if kind != "validate"}


def assert_sent_by_sendfile(delta: Dict[str, Dict[str, int]], nbytes: int) -> None:
    assert delta["sendfile"]["bytes"] == nbytes, delta
    assert delta["sendfile"]["transmissions"] == 1, delta
    assert not any(e["bytes"] for p, e in delta.items() if p != "sendfile"), delta


def assert_nothing_sent_by_fastwrap(server: Server, before: Dict[str, Dict[str, int]]) -> None:
    after = server.stats()
    assert {p: e["bytes"] for p, e in after.items()} == {
        p: e["bytes"] for p, e in before.items()}, (before, after)


# -- transparent chains: zero-copy ----------------------------------------------------------

@pytest.mark.parametrize("chain", TRANSPARENT)
def test_file_inside_transparent_wrappers_leaves_zero_copy(server: Server, files,
                                                            chain: str) -> None:
    rid = new_id()
    before = server.stats()
    status, headers, body = server.get(f"/files/{BIG}?id={rid}&wrap={chain}")
    assert status == 200
    assert body == files[BIG]
    assert headers["content-length"] == str(BIG_SIZE)
    for name, value in layer_headers(chain).items():
        assert headers.get(name) == value, headers
    assert_sent_by_sendfile(server.sent_since(before, 1), BIG_SIZE)
    assert server.closes(rid, len(expected_closes(chain))) == expected_closes(chain)


@pytest.mark.parametrize("chain", TRANSPARENT)
def test_wrappers_are_closed_in_the_order_iteration_closes_them(server: Server, files,
                                                                 chain: str) -> None:
    """The same chain with an opaque wrapper outside is iterated: its closes, less the
    opaque one's, are the zero-copy response's."""
    sent, iterated = new_id(), new_id()
    assert server.get(f"/files/{BIG}?id={sent}&wrap={chain}")[2] == files[BIG]
    outer = f"opaque#{len(chain.split(','))}"
    assert server.get(f"/files/{BIG}?id={iterated}&wrap={chain},opaque")[2] == files[BIG]
    count = len(expected_closes(chain))
    by_iteration = server.closes(iterated, count + 1)
    assert by_iteration[0] == outer
    assert server.closes(sent, count) == by_iteration[1:]


@pytest.mark.parametrize("chain", ["validate,closing,transparent", "transparent"])
def test_head_inside_wrappers_has_no_body_and_closes_once(server: Server, files,
                                                          chain: str) -> None:
    rid = new_id()
    before = server.stats()
    status, headers, body = server.get(f"/files/{BIG}?id={rid}&wrap={chain}", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(BIG_SIZE)
    assert server.closes(rid, len(expected_closes(chain))) == expected_closes(chain)
    after = server.stats()
    assert after["sendfile"]["bytes"] == before["sendfile"]["bytes"]


# -- chains that cannot be seen through: the read loop, as before ----------------------------

@pytest.mark.parametrize("chain", OPAQUE)
def test_file_inside_a_wrapper_that_cannot_be_seen_through_is_iterated(
        server: Server, files, chain: str) -> None:
    rid = new_id()
    before = server.stats()
    status, headers, body = server.get(f"/files/{BIG}?id={rid}&wrap={chain}")
    assert status == 200
    if "gzip" in chain:
        assert headers["content-encoding"] == "gzip"
        body = gzip.decompress(body)
    assert body == files[BIG]
    assert server.closes(rid, len(expected_closes(chain))) == expected_closes(chain)
    assert_nothing_sent_by_fastwrap(server, before)


# -- failures: every layer is still closed once ---------------------------------------------

CHAIN = "validate,closing,transparent"


def test_client_leaving_mid_body_closes_every_layer_once(server: Server, files) -> None:
    rid = new_id()
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /files/{HUGE}?id={rid}&wrap={CHAIN} HTTP/1.1\r\n"
                     "Host: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received) < 256 * 1024:
            chunk = sock.recv(65536)
            assert chunk, "the server closed before the client left"
            received += chunk
        assert received.split(b" ", 2)[1] == b"200", received[:200]
        # Leave with a reset: the server's next write fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert server.closes(rid, len(expected_closes(CHAIN))) == expected_closes(CHAIN)
    status, _, body = server.get(f"/files/{BIG}?id={new_id()}&wrap={CHAIN}")
    assert (status, body) == (200, files[BIG])


def test_short_file_inside_wrappers_closes_the_connection_and_every_layer_once(
        server: Server, files) -> None:
    rid = new_id()
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG) as sock:
        sock.sendall(f"GET /files/{BIG}?id={rid}&wrap={CHAIN}&length={BIG_SIZE + 1000} "
                     "HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = recv_until_eof(sock)  # the server closes: the client sees it short
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    assert f"content-length: {BIG_SIZE + 1000}".encode() in head.lower()
    assert body == files[BIG]
    assert server.closes(rid, len(expected_closes(CHAIN))) == expected_closes(CHAIN)


# -- Flask behind header-adding middleware --------------------------------------------------

FLASK_CHAINS = ["closing", "transparent", "validate,closing"]


@pytest.mark.parametrize("chain", FLASK_CHAINS)
def test_flask_send_file_behind_header_adding_middleware(server: Server, files,
                                                         chain: str) -> None:
    rid = new_id()
    before = server.stats()
    status, headers, body = server.get(f"/flask/{BIG}?id={rid}&wrap={chain}")
    assert (status, body == files[BIG]) == (200, True)
    for name, value in layer_headers(chain).items():
        assert headers.get(name) == value, headers
    assert_sent_by_sendfile(server.sent_since(before, 1), BIG_SIZE)
    assert server.closes(rid, len(expected_closes(chain))) == expected_closes(chain)


@pytest.mark.parametrize("chain", FLASK_CHAINS)
def test_flask_range_behind_middleware_is_sent_from_the_range(server: Server, files,
                                                              chain: str) -> None:
    rid = new_id()
    first, last = 1_000_001, 1_900_000
    before = server.stats()
    status, headers, body = server.get(f"/flask/{BIG}?id={rid}&wrap={chain}",
                                       {"Range": f"bytes={first}-{last}"})
    assert status == 206
    assert headers["content-range"] == f"bytes {first}-{last}/{BIG_SIZE}"
    assert body == files[BIG][first:last + 1]
    # Seeked to, not read up to: only the range's bytes moved, all by sendfile.
    assert_sent_by_sendfile(server.sent_since(before, 1), last + 1 - first)
    assert server.closes(rid, len(expected_closes(chain))) == expected_closes(chain)


# -- the rule, object by object -------------------------------------------------------------

@pytest.fixture
def data_path(tmp_path):
    path = tmp_path / "d.bin"
    path.write_bytes(b"0123456789" * 100)
    return path


def _validated(inner: Any, started: bool = True) -> Any:
    wrapper = validate.IteratorWrapper(inner, [None] if started else [])
    return wrapper


@pytest.fixture(params=["fastwrap", "wsgiref"])
def file_wrapper(request, engine, data_path) -> Iterator[Any]:
    """A fresh file wrapper: the engine's FileWrapper or the stdlib's."""
    made: List[Any] = []

    def make() -> Any:
        f = open(data_path, "rb")
        wrapper = engine.FileWrapper(f) if request.param == "fastwrap" else util.FileWrapper(f)
        made.append(f)
        return wrapper

    yield make
    for f in made:
        f.close()


class DeclaredWithoutClose:
    """A minimal protocol wrapper, but with no close(): closing it would not close the file."""

    def __init__(self, inner: Any) -> None:
        self.wsgi_file_wrapped = inner
        self.inner = inner

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> bytes:
        self.wsgi_file_wrapped = None
        return next(self.inner)


class Declared(DeclaredWithoutClose):
    """A minimal protocol wrapper: says what it wraps; closes it."""

    def close(self) -> None:
        self.inner.close()


def test_every_known_wrapper_and_the_protocol_are_seen_through(file_wrapper) -> None:
    from werkzeug.wsgi import ClosingIterator
    inner = file_wrapper()
    declared = Declared(inner)
    validated = _validated(declared)
    closing = ClosingIterator(validated, [lambda: None])
    response = serving.FileResponse.of(closing)
    assert response is not None
    assert response.wrapper is inner and response.result is closing
    assert response.layers == (closing, validated, declared)
    validated.close()


def test_validate_iterator_that_started_or_closed_is_not_seen_through(file_wrapper) -> None:
    started = _validated(file_wrapper())
    next(started)
    assert serving.FileResponse.of(started) is None
    closed = _validated(file_wrapper())
    closed.close()
    assert serving.FileResponse.of(closed) is None
    # start_response not called yet: iterating is what makes validate report it.
    early = _validated(file_wrapper(), started=False)
    assert serving.FileResponse.of(early) is None
    early.close()
    started.close()


def test_closing_iterator_is_seen_through_only_when_it_closes_what_it_wraps(
        file_wrapper) -> None:
    from werkzeug.wsgi import ClosingIterator
    assert serving.FileResponse.of(ClosingIterator(file_wrapper())) is not None
    detached = ClosingIterator(file_wrapper())
    detached._callbacks = [lambda: None]
    assert serving.FileResponse.of(detached) is None
    assert serving.FileResponse.of(ClosingIterator([b"not", b"a file"])) is None

    class Subclass(ClosingIterator):
        def __next__(self) -> bytes:
            return super().__next__().upper()

    assert serving.FileResponse.of(Subclass(file_wrapper())) is None


def test_a_namesake_of_a_known_class_is_not_trusted(file_wrapper) -> None:
    namesake = type("ClosingIterator", (), {"__module__": "somewhere.wsgi"})()
    namesake._next = __import__("functools").partial(next, file_wrapper())
    assert serving.unwrap(namesake) is None
    other = type("IteratorWrapper", (), {"__module__": "not_wsgiref.validate"})()
    other.original_iterator = other.iterator = file_wrapper()
    other.closed, other.check_start_response = False, [None]
    assert serving.unwrap(other) is None


def test_protocol_wrappers_that_break_a_promise_are_iterated(file_wrapper) -> None:
    assert serving.FileResponse.of(Declared(None)) is None
    looped = Declared(None)
    looped.wsgi_file_wrapped = looped
    assert serving.FileResponse.of(looped) is None
    # Closing it would leave the file open.
    assert serving.FileResponse.of(DeclaredWithoutClose(file_wrapper())) is None
    # A chain that loops back on itself ends at MAX_LAYERS.
    a, b = Declared(None), Declared(None)
    a.wsgi_file_wrapped, b.wsgi_file_wrapped = b, a
    assert serving.FileResponse.of(a) is None
    deep = file_wrapper()
    for _ in range(serving.MAX_LAYERS):
        deep = Declared(deep)
    assert serving.FileResponse.of(deep) is not None
    assert serving.FileResponse.of(Declared(deep)) is None


def test_range_wrapper_inside_wrappers_keeps_its_range(file_wrapper) -> None:
    from werkzeug.wsgi import ClosingIterator, _RangeWrapper
    inner = file_wrapper()
    response = serving.FileResponse.of(ClosingIterator(_RangeWrapper(inner, 10, 20)))
    assert response is not None
    assert (response.wrapper, response.range_start, response.limit) == (inner, 10, 20)
    # With a wrapper between range and file werkzeug would read up to the range.
    assert serving.FileResponse.of(_RangeWrapper(ClosingIterator(file_wrapper()), 10, 20)) \
        is None


def test_file_response_close_closes_the_result_once(file_wrapper) -> None:
    calls: List[str] = []
    inner = file_wrapper()

    class Counting(Declared):
        def close(self) -> None:
            calls.append("closed")
            inner.close()

    response = serving.FileResponse.of(Counting(inner))
    assert response is not None
    response.close()
    response.close()
    assert calls == ["closed"]
    assert inner.filelike.closed


def _readme_example() -> Dict[str, Any]:
    """The code block of the README's protocol example, run."""
    lines = (Path(__file__).resolve().parent.parent / "README.rst").read_text().splitlines()
    start = lines.index(".. code-block:: python",
                        lines.index("Middleware around a file response")) + 1
    block = []
    for line in lines[start + 1:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    namespace: Dict[str, Any] = {}
    exec(compile("\n".join(block), "README.rst (middleware example)", "exec"), namespace)
    return namespace


def test_readme_protocol_example_is_seen_through_and_closes_once(file_wrapper) -> None:
    example = _readme_example()
    ended: List[float] = []
    inner = file_wrapper()
    app = example["timing"](lambda environ, start_response: inner, ended.append)
    result = app({}, None)
    response = serving.FileResponse.of(validate.IteratorWrapper(result, [None]))
    assert response is not None and response.wrapper is inner
    response.close()
    assert len(ended) == 1 and inner.filelike.closed
    # Started, it is iterated: and yields the file's bytes.
    again = example["timing"](lambda environ, start_response: file_wrapper(), ended.append)(
        {}, None)
    first = next(again)
    assert serving.FileResponse.of(again) is None
    assert first + b"".join(again) == b"0123456789" * 100
    again.close()
    assert len(ended) == 2
