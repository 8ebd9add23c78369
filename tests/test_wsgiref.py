"""fastwrap.wsgiref in detail, in this process: install(), make_server, and the rules.

Servers here run in threads on 127.0.0.1; handlers without a socket write to
a BytesIO, a file, or (CGI) a pipe read by this process.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from wsgiref import handlers, simple_server, util

import pytest

import fastwrap
import fastwrap.wsgiref
from _support import HANG, SRC, random_bytes, recv_until_eof

DATA = random_bytes(700_000 + 77, seed=40)
SIZE = len(DATA)


@pytest.fixture(autouse=True)
def _never_left_installed():
    """Every test starts and ends with the stock wsgiref."""
    fastwrap.wsgiref.uninstall()
    yield
    fastwrap.wsgiref.uninstall()


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


def sendfile_bytes() -> int:
    return fastwrap.stats()["sendfile"]["bytes"]


def total_bytes() -> int:
    return sum(entry["bytes"] for entry in fastwrap.stats().values())


# -- install(), uninstall(), installed() ----------------------------------------------------

_PATCHABLE = ("result_is_file", "sendfile", "wsgi_file_wrapper")


def _class_state() -> Dict[str, Dict[str, Any]]:
    """Every attribute defined on the wsgiref handler classes, by identity."""
    classes = (handlers.BaseHandler, handlers.SimpleHandler, handlers.BaseCGIHandler,
               handlers.CGIHandler, handlers.IISCGIHandler, simple_server.ServerHandler)
    return {cls.__qualname__: dict(vars(cls)) for cls in classes}


def _assert_same_state(before: Dict[str, Dict[str, Any]]) -> None:
    after = _class_state()
    assert after.keys() == before.keys()
    for name, attributes in before.items():
        assert after[name].keys() == attributes.keys(), name
        for key, value in attributes.items():
            assert after[name][key] is value, f"{name}.{key} was not restored"


def test_uninstall_restores_the_stock_methods_exactly() -> None:
    before = _class_state()
    stock = {name: vars(handlers.BaseHandler)[name] for name in _PATCHABLE}
    fastwrap.wsgiref.install()
    assert fastwrap.wsgiref.is_installed()
    assert vars(handlers.BaseHandler)["sendfile"] is not stock["sendfile"]
    assert vars(handlers.BaseHandler)["result_is_file"] is not stock["result_is_file"]
    # The stock wrapper class stays: CPython's test_wsgiref asserts it.
    assert handlers.BaseHandler.wsgi_file_wrapper is util.FileWrapper
    fastwrap.wsgiref.install()  # twice is once: one uninstall() undoes it
    fastwrap.wsgiref.uninstall()
    assert not fastwrap.wsgiref.is_installed()
    _assert_same_state(before)
    fastwrap.wsgiref.uninstall()  # when not installed: nothing to do
    _assert_same_state(before)


def test_installed_context_restores_on_exit_and_on_error() -> None:
    before = _class_state()
    with fastwrap.wsgiref.installed():
        assert fastwrap.wsgiref.is_installed()
    _assert_same_state(before)
    with pytest.raises(RuntimeError):
        with fastwrap.wsgiref.installed():
            raise RuntimeError("boom")
    assert not fastwrap.wsgiref.is_installed()
    _assert_same_state(before)


def test_installed_context_leaves_an_earlier_install_in_place() -> None:
    fastwrap.wsgiref.install()
    patched = dict(vars(handlers.BaseHandler))
    with fastwrap.wsgiref.installed():
        pass
    assert fastwrap.wsgiref.is_installed()
    assert vars(handlers.BaseHandler)["sendfile"] is patched["sendfile"]


# -- handlers writing somewhere without a socket --------------------------------------------

def make_environ(method: str = "GET", path: str = "/") -> Dict[str, Any]:
    environ: Dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "SERVER_PROTOCOL": "HTTP/1.1"}
    util.setup_testing_defaults(environ)
    return environ


class RecordingHandler(handlers.SimpleHandler):
    """A SimpleHandler that keeps ``bytes_sent`` (what its access log would show):
    BaseHandler.close() resets it."""

    logged_bytes_sent: Optional[int] = None

    def close(self) -> None:
        self.logged_bytes_sent = self.bytes_sent
        super().close()


def run_simple_handler(app: Callable, method: str = "GET",
                       stdout: Any = None) -> Tuple[RecordingHandler, Any]:
    out = io.BytesIO() if stdout is None else stdout
    handler = RecordingHandler(io.BytesIO(), out, io.StringIO(), make_environ(method),
                               multithread=False)
    handler.run(app)
    return handler, out


def split_response(raw: bytes) -> Tuple[int, Dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


class FileApp:
    """Answers with ``environ['wsgi.file_wrapper']`` around the data file, as configured."""

    def __init__(self, path: Path, status: str = "200 OK", offset: int = 0,
                 buffered_read: int = 0, content_length: Optional[int] = None) -> None:
        self.path, self.status, self.offset = path, status, offset
        self.buffered_read, self.content_length = buffered_read, content_length
        self.wrappers: List[str] = []

    def __call__(self, environ: Dict[str, Any], start_response: Callable) -> Any:
        f = open(self.path, "rb")
        if self.offset:
            f.seek(self.offset)
        if self.buffered_read:
            f.read(self.buffered_read)  # tell() moves; the descriptor is a buffer ahead
        headers = [("Content-Type", "application/octet-stream")]
        if self.content_length is not None:
            headers.append(("Content-Length", str(self.content_length)))
        start_response(self.status, headers)
        wrapper_class = environ["wsgi.file_wrapper"]
        self.wrappers.append(f"{wrapper_class.__module__}.{wrapper_class.__qualname__}")
        return wrapper_class(f)


def test_wsgi_file_wrapper_stays_the_stdlib_class_when_installed(data_file: Path) -> None:
    app = FileApp(data_file)
    with fastwrap.wsgiref.installed():
        handler, out = run_simple_handler(app)
    assert app.wrappers == ["wsgiref.util.FileWrapper"]
    assert split_response(out.getvalue())[2] == DATA


def test_bytesio_handler_falls_back_to_the_loop_with_the_rules(data_file: Path) -> None:
    """No descriptor: the handler's own write loop, but fastwrap's rules."""
    with fastwrap.wsgiref.installed():
        before = fastwrap.stats()
        # starts at tell() (after a buffered read), Content-Length added
        handler, out = run_simple_handler(FileApp(data_file, offset=1000, buffered_read=5))
        status, headers, body = split_response(out.getvalue())
        assert status == 200
        assert headers["content-length"] == str(SIZE - 1005)
        assert body == DATA[1005:]
        assert handler.logged_bytes_sent == SIZE - 1005
        # min(Content-Length, remaining)
        handler, out = run_simple_handler(FileApp(data_file, content_length=4321))
        status, headers, body = split_response(out.getvalue())
        assert headers["content-length"] == "4321"
        assert body == DATA[:4321]
        assert handler.logged_bytes_sent == 4321
        # HEAD, 204, 304: no body
        for method, status_line in (("HEAD", "200 OK"), ("GET", "204 No Content"),
                                    ("GET", "304 Not Modified")):
            handler, out = run_simple_handler(FileApp(data_file, status=status_line), method)
            status, headers, body = split_response(out.getvalue())
            assert status == int(status_line.split()[0])
            assert body == b"", (method, status_line)
            assert handler.logged_bytes_sent == 0
        assert fastwrap.stats() == before, "the fallback must not go through transmit()"


def test_bytesio_handler_short_file_is_logged(data_file: Path, caplog) -> None:
    with fastwrap.wsgiref.installed(), caplog.at_level(logging.WARNING, "fastwrap"):
        handler, out = run_simple_handler(FileApp(data_file, content_length=SIZE + 500))
    status, headers, body = split_response(out.getvalue())
    assert headers["content-length"] == str(SIZE + 500)
    assert body == DATA
    assert handler.logged_bytes_sent == SIZE
    assert any("promised" in r.getMessage() for r in caplog.records), caplog.text


def test_handler_writing_to_a_real_file_goes_through_fastwrap(data_file: Path,
                                                             tmp_path: Path) -> None:
    """A handler whose stdout is a buffered file has a descriptor: fastwrap sends to it,
    after flushing what the handler buffered, in order."""
    target = tmp_path / "out.http"
    with fastwrap.wsgiref.installed(), open(target, "wb") as out:
        out.write(b"PREAMBLE\n")  # buffered, not yet on the descriptor
        before = total_bytes()
        handler, _ = run_simple_handler(FileApp(data_file, offset=17), stdout=out)
        sent = total_bytes() - before
    raw = target.read_bytes()
    assert raw.startswith(b"PREAMBLE\n")
    status, headers, body = split_response(raw[len(b"PREAMBLE\n"):])
    assert status == 200 and headers["content-length"] == str(SIZE - 17)
    assert body == DATA[17:]
    assert sent == SIZE - 17
    assert handler.logged_bytes_sent == SIZE - 17


# -- responses that are not (just) a file: iterated -----------------------------------------

class Passthrough:
    """An unknown response wrapper: iterates what it wraps, and closes it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        self.closed += 1
        self.inner.close()


class UpperFileWrapper(util.FileWrapper):
    """A FileWrapper subclass that changes what it yields: its bytes are not the file's."""

    def __next__(self) -> bytes:
        return super().__next__().upper()

    def __iter__(self) -> "UpperFileWrapper":
        return self


def _iterated_cases(path: Path) -> Dict[str, Tuple[Callable[[], Any], bytes]]:
    def passthrough() -> Any:
        return Passthrough(util.FileWrapper(open(path, "rb")))

    def generator() -> Any:
        def gen() -> Iterator[bytes]:
            with open(path, "rb") as f:
                yield from util.FileWrapper(f, 4096)
        return gen()

    def touched_range() -> Any:
        # werkzeug's range wrapper, already iterated once (its first chunk is DATA[10:16]
        # with 16-byte blocks): fastwrap must not seek it back to the range's start.
        from werkzeug.wsgi import _RangeWrapper
        wrapper = _RangeWrapper(util.FileWrapper(open(path, "rb"), 16), 10, 100)
        next(wrapper)
        return wrapper

    def upper() -> Any:
        return UpperFileWrapper(open(path, "rb"))

    return {
        "passthrough": (passthrough, DATA),
        "generator": (generator, DATA),
        "touched-range-wrapper": (touched_range, DATA[16:110]),
        "subclass-changing-bytes": (upper, DATA.upper()),
    }


@pytest.mark.parametrize("case", ["passthrough", "generator", "touched-range-wrapper",
                                  "subclass-changing-bytes"])
def test_unknown_response_wrappers_are_iterated_correctly(data_file: Path, case: str) -> None:
    make, expected = _iterated_cases(data_file)[case]
    made: List[Any] = []

    def app(environ: Dict[str, Any], start_response: Callable) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(expected)))])
        made.append(make())
        return made[-1]

    with fastwrap.wsgiref.installed():
        handler, out = run_simple_handler(app)
    status, headers, body = split_response(out.getvalue())
    assert status == 200
    assert body == expected
    if isinstance(made[0], Passthrough):
        assert made[0].closed == 1


@pytest.mark.parametrize("case", ["passthrough", "touched-range-wrapper",
                                  "subclass-changing-bytes"])
def test_unknown_response_wrappers_are_iterated_correctly_on_a_socket(
        data_file: Path, case: str, server_kind: str) -> None:
    make, expected = _iterated_cases(data_file)[case]

    def app(environ: Dict[str, Any], start_response: Callable) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(expected)))])
        return make()

    with serve(server_kind, app) as srv:
        status, headers, body, _ = srv.raw("GET", "/")
    assert status == 200
    assert body == expected


# -- CGI: stdout is a pipe ------------------------------------------------------------------

CGI_SCRIPT = r"""
import json, sys
import fastwrap, fastwrap.wsgiref
from wsgiref.handlers import CGIHandler
fastwrap.wsgiref.install()
path, offset, declared = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def app(environ, start_response):
    f = open(path, "rb")
    f.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    if declared:
        headers.append(("Content-Length", declared))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f)

CGIHandler().run(app)
sys.stdout.flush()
sys.stderr.write("\nSTATS " + json.dumps(fastwrap.stats()) + "\n")
"""


def run_cgi(path: Path, offset: int, declared: str = "",
            method: str = "GET") -> Tuple[bytes, Dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTWRAP_DISABLE", "FASTWRAP_NO_EXTENSIONS")}
    env.update(PYTHONPATH=str(SRC), REQUEST_METHOD=method, SERVER_NAME="127.0.0.1",
               SERVER_PORT="80", SERVER_PROTOCOL="HTTP/1.1", SCRIPT_NAME="/cgi",
               PATH_INFO="/data", QUERY_STRING="", GATEWAY_INTERFACE="CGI/1.1")
    done = subprocess.run([sys.executable, "-c", CGI_SCRIPT, str(path), str(offset), declared],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=HANG)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr
    stats = json.loads(stderr.rsplit("STATS ", 1)[1])
    return done.stdout, stats, stderr


def test_cgi_handler_sends_through_its_stdout_pipe(data_file: Path) -> None:
    raw, stats, _ = run_cgi(data_file, 12345)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK\r\n")
    assert b"\r\nContent-Length: %d" % (SIZE - 12345) in head + b"\r\n"
    assert body == DATA[12345:]
    # Zero-copy into the pipe: sendfile or splice, not reading into Python.
    zero_copy = stats["sendfile"]["bytes"] + stats["splice"]["bytes"]
    assert zero_copy == SIZE - 12345, stats
    assert stats["read"]["bytes"] == stats["readinto"]["bytes"] == 0, stats


def test_cgi_handler_honours_content_length_and_head(data_file: Path) -> None:
    raw, stats, _ = run_cgi(data_file, 0, declared="1000")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head
    assert body == DATA[:1000]
    raw, stats, _ = run_cgi(data_file, 0, method="HEAD")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % SIZE in head
    assert body == b""


def test_cgi_handler_short_file_is_logged(data_file: Path) -> None:
    raw, stats, stderr = run_cgi(data_file, 0, declared=str(SIZE + 10))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == DATA
    assert "promised" in stderr


# -- real servers on 127.0.0.1 --------------------------------------------------------------

class Served:
    def __init__(self, port: int, log: List[Tuple[str, str]]) -> None:
        self.port = port
        self.log = log  # (status code, size) from the access log, as the server wrote them

    def raw(self, method: str, path: str, version: str = "HTTP/1.1",
            extra: str = "") -> Tuple[int, Dict[str, str], bytes, bool]:
        """One request on a fresh connection; (status, headers, everything after the
        header block until the server closed, whether it closed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=HANG) as sock:
            sock.sendall(f"{method} {path} {version}\r\nHost: 127.0.0.1\r\n{extra}"
                         "Connection: close\r\n\r\n".encode())
            received = bytearray(recv_until_eof(sock))
        status, headers, body = split_response(bytes(received))
        return status, headers, body, True

    def wait_log(self, entries: int) -> List[Tuple[str, str]]:
        deadline = time.monotonic() + HANG
        while len(self.log) < entries and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.log)


def _logging_handler(base: type, log: List[Tuple[str, str]]) -> type:
    class Logging(base):  # type: ignore[misc, valid-type]
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            log.append((str(code), str(size)))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Logging


@contextlib.contextmanager
def serve(kind: str, app: Callable, threads: int = 4) -> Iterator[Served]:
    log: List[Tuple[str, str]] = []
    if kind == "installed":
        stack = contextlib.ExitStack()
        stack.enter_context(fastwrap.wsgiref.installed())
        server = simple_server.make_server(
            "127.0.0.1", 0, app,
            handler_class=_logging_handler(simple_server.WSGIRequestHandler, log))
    else:
        stack = contextlib.ExitStack()
        server = fastwrap.wsgiref.make_server(
            "127.0.0.1", 0, app, threads=threads,
            handler=_logging_handler(fastwrap.wsgiref.RequestHandler, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with stack:
            yield Served(server.server_address[1], log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(HANG)


@pytest.fixture(params=["installed", "make_server"])
def server_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_make_server_provides_fastwraps_file_wrapper(data_file: Path) -> None:
    app = FileApp(data_file)
    with serve("make_server", app) as srv:
        status, headers, body, _ = srv.raw("GET", "/")
    assert body == DATA
    assert app.wrappers == ["fastwrap._fastwrap.FileWrapper"
                            if fastwrap.IMPLEMENTATION == "cython"
                            else "fastwrap._purepy.FileWrapper"]
    assert not fastwrap.wsgiref.is_installed()  # nothing patched globally


def test_socket_response_starts_at_tell_and_gets_a_content_length(data_file: Path,
                                                                  server_kind: str) -> None:
    app = FileApp(data_file, offset=100, buffered_read=3)
    with serve(server_kind, app) as srv:
        before = sendfile_bytes()
        status, headers, body, _ = srv.raw("GET", "/")
        log = srv.wait_log(1)
    assert status == 200
    assert headers["content-length"] == str(SIZE - 103)
    assert body == DATA[103:]
    assert sendfile_bytes() - before == SIZE - 103
    assert log == [("200", str(SIZE - 103))]


def test_socket_response_sends_min_of_content_length_and_remaining(data_file: Path,
                                                                  server_kind: str) -> None:
    app = FileApp(data_file, offset=10, content_length=50_000)
    with serve(server_kind, app) as srv:
        before = sendfile_bytes()
        status, headers, body, _ = srv.raw("GET", "/")
        log = srv.wait_log(1)
    assert headers["content-length"] == "50000"
    assert body == DATA[10:50_010]
    assert sendfile_bytes() - before == 50_000
    assert log == [("200", "50000")]


@pytest.mark.parametrize("method, status_line", [("HEAD", "200 OK"),
                                                 ("GET", "204 No Content"),
                                                 ("GET", "304 Not Modified")])
def test_socket_response_without_a_body(data_file: Path, server_kind: str, method: str,
                                        status_line: str) -> None:
    app = FileApp(data_file, status=status_line)
    with serve(server_kind, app) as srv:
        before = sendfile_bytes()
        status, headers, body, _ = srv.raw(method, "/")
        log = srv.wait_log(1)
    assert status == int(status_line.split()[0])
    assert body == b""
    if method == "HEAD":
        assert headers["content-length"] == str(SIZE)
    assert sendfile_bytes() == before
    assert log == [(status_line.split()[0], "0")]


def test_short_file_is_logged_and_the_connection_closed(data_file: Path, server_kind: str,
                                                        caplog) -> None:
    """The client was promised more than the file holds: it gets what there is, then
    the server closes (no ``Connection: close`` asked for) instead of leaving it waiting."""
    app = FileApp(data_file, content_length=SIZE + 999)
    with caplog.at_level(logging.WARNING, "fastwrap"), serve(server_kind, app) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=HANG) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = bytearray()
            while True:
                chunk = sock.recv(65536)  # a hang here (until HANG) would be the bug
                if not chunk:
                    break
                received += chunk
        log = srv.wait_log(1)
    status, headers, body = split_response(bytes(received))
    assert headers["content-length"] == str(SIZE + 999)
    assert body == DATA
    assert log == [("200", str(SIZE))]
    assert any("promised" in r.getMessage() for r in caplog.records), caplog.text


# -- make_server: keep-alive, threads, HTTP/1.0 ---------------------------------------------

def _read_response(sock_file: Any, body: bool = True) -> Tuple[int, Dict[str, str], bytes]:
    status_line = sock_file.readline()
    assert status_line, "the server closed the connection"
    headers = {}
    while True:
        line = sock_file.readline()
        if line in (b"\r\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0")) if body else 0
    return int(status_line.split()[1]), headers, sock_file.read(length)


def test_make_server_keeps_the_connection_alive_after_file_responses(data_file: Path) -> None:
    app = FileApp(data_file)
    with serve("make_server", app) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=HANG) as sock:
            rfile = sock.makefile("rb")
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = _read_response(rfile)
            assert status == 200 and body == DATA
            assert headers.get("connection") != "close"
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = _read_response(rfile, body=False)
            assert status == 200 and headers["content-length"] == str(SIZE)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, headers, body = _read_response(rfile)
            assert status == 200 and body == DATA
            assert rfile.read() == b""  # then the server closes: nothing stray (no HEAD body)
            rfile.close()
        log = srv.wait_log(3)
    assert log == [("200", str(SIZE)), ("200", "0"), ("200", str(SIZE))]


def test_make_server_serves_keep_alive_clients_in_parallel_threads(data_file: Path) -> None:
    """With threads=3, two idle keep-alive connections hold two threads and a third
    client is still served; then several clients download at once, byte-exact."""
    app = FileApp(data_file)
    with serve("make_server", app, threads=3) as srv:
        idle = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=HANG)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            rfile = sock.makefile("rb")
            assert _read_response(rfile)[2] == DATA
            idle.append((sock, rfile))  # open, idle, its thread waiting for a next request
        status, _, body, _ = srv.raw("GET", "/")
        assert status == 200 and body == DATA
        for sock, rfile in idle:
            rfile.close()
            sock.close()

    with serve("make_server", app, threads=8) as srv:
        results: List[bytes] = []
        errors: List[BaseException] = []

        def fetch() -> None:
            try:
                results.append(srv.raw("GET", "/")[2])
            except BaseException as exc:  # reported below
                errors.append(exc)

        before = sendfile_bytes()
        workers = [threading.Thread(target=fetch) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(HANG)
        log = srv.wait_log(8)
    assert not errors
    assert len(results) == 8 and all(r == DATA for r in results)
    assert len(log) == 8
    assert sendfile_bytes() - before == 8 * SIZE


def test_make_server_rejects_zero_threads() -> None:
    with pytest.raises(ValueError, match="threads"):
        fastwrap.wsgiref.make_server("127.0.0.1", 0, lambda e, s: [], threads=0)


def test_make_server_answers_http_1_0_clients_and_closes(data_file: Path) -> None:
    app = FileApp(data_file, offset=5)
    with serve("make_server", app) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=HANG) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # no Host, no Connection header
            received = bytearray()
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # HTTP/1.0 without keep-alive: the server closes
                received += chunk
    status, headers, body = split_response(bytes(received))
    assert status == 200
    assert headers["content-length"] == str(SIZE - 5)
    assert body == DATA[5:]


def test_make_server_answers_http_1_0_head(data_file: Path) -> None:
    with serve("make_server", FileApp(data_file)) as srv:
        status, headers, body, _ = srv.raw("HEAD", "/", version="HTTP/1.0")
    assert status == 200 and headers["content-length"] == str(SIZE) and body == b""


def test_make_server_head_of_an_iterated_response_has_no_body() -> None:
    """Not a file: the handler's own loop.  On a keep-alive connection a HEAD body would
    be taken for the next response, so the server must not send it."""
    def app(environ: Dict[str, Any], start_response: Callable) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    with serve("make_server", app) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=HANG) as sock:
            rfile = sock.makefile("rb")
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            everything = rfile.read()
            rfile.close()
    first, _, rest = everything.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200"), f"HEAD response followed by {rest[:20]!r}"
    assert rest.endswith(b"\r\n\r\nhello")
