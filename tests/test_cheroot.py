"""cheroot with ``fastwrap.cheroot.Server``, end to end, against stock cheroot.

Every test talks to a real cheroot process on 127.0.0.1 (see
_serve_cheroot.py) serving apps_cheroot.py, once per engine (the server runs
with or without FASTWRAP_NO_EXTENSIONS), and checks the bytes the client
got, what fastwrap's counters in the server say carried them, and the
server's ``fastwrap.cheroot`` debug log.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("cheroot", reason="cheroot is in the project's test extra")

from _serve_cheroot import CherootServer, serve_cheroot  # noqa: E402
from apps_cheroot import PIPE_DATA  # noqa: E402
from _support import random_bytes  # noqa: E402

DATA = random_bytes(3_000_000 + 123, seed=4242)
SIZE = len(DATA)
BIG = 32 << 20  # bigger than any socket buffer: a client can leave mid-body
KERNEL_PATHS = ("sendfile", "splice")
ENGINES = [
    pytest.param({}, id="cython", marks=pytest.mark.c_extension),
    pytest.param({"FASTWRAP_NO_EXTENSIONS": "1"}, id="python"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cheroot-files")
    (directory / "data.bin").write_bytes(DATA)
    (directory / "empty.bin").write_bytes(b"")
    with open(directory / "big.bin", "wb") as f:
        for i in range(BIG >> 20):
            f.write(random_bytes(1 << 20, seed=i))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _env(root: Path, engine_env: Dict[str, str]) -> Dict[str, str]:
    return {"FASTWRAP_E2E_ROOT": str(root), "FASTWRAP_TEST_FILE": str(root / "data.bin"),
            **engine_env}


@pytest.fixture(scope="module", params=ENGINES)
def server(request, root):
    with serve_cheroot("apps_cheroot:app", "fastwrap", env=_env(root, request.param)) as s:
        implementation = _stats(s)["implementation"]
        assert implementation == ("python" if request.param else "cython")
        yield s


@pytest.fixture(scope="module")
def stock(root):
    with serve_cheroot("apps_cheroot:app", "stock", env=_env(root, {})) as s:
        yield s


@pytest.fixture(scope="module", params=ENGINES)
def tls_server(request, root):
    with serve_cheroot("apps_cheroot:app", "fastwrap", tls=True,
                       env=_env(root, request.param)) as s:
        yield s


# -- the client side ------------------------------------------------------------------

def _connect(server: CherootServer, rcvbuf: Optional[int] = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect((server.host, server.port))
    if server.tls:
        assert server.context is not None
        sock = server.context.wrap_socket(sock, server_hostname=server.host)
    return sock


def _request(target: str, method: str = "GET", close: bool = False, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Reader:
    """Responses read off one connection, framed by their Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        self.buffer += chunk
        return bool(chunk)

    def response(self, method: str = "GET") -> Tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"the connection closed inside the head: {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = _header(head, "content-length")
        status = int(head.split(None, 2)[1])
        if method == "HEAD" or status in (204, 304):
            return head, b""
        assert length is not None, head
        while len(self.buffer) < int(length):
            assert self._fill(), f"short body: {len(self.buffer)} of {length}"
        body, self.buffer = self.buffer[:int(length)], self.buffer[int(length):]
        return head, body

    def rest(self) -> bytes:
        """What follows, until the server closes."""
        while self._fill():
            pass
        rest, self.buffer = self.buffer, b""
        return rest


def _header(head: bytes, name: str) -> Optional[str]:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.encode():
            return value.strip().decode("latin-1")
    return None


def _exchange(server: CherootServer, *requests: Tuple[str, str]) -> List[Tuple[bytes, bytes]]:
    """(method, target) requests one after the other on one keep-alive connection.

    The last one asks to close; nothing may follow its response.
    """
    responses = []
    with _connect(server) as sock:
        reader = Reader(sock)
        for i, (method, target) in enumerate(requests):
            last = i == len(requests) - 1
            sock.sendall(_request(target, method, last))
            responses.append(reader.response(method))
            if not last:
                assert b"connection: close" not in responses[-1][0].lower()
        assert reader.rest() == b"", "bytes after the last response"
    return responses


def _until_eof(server: CherootServer, target: str, *headers: str) -> bytes:
    """Everything the server sends for one GET that asks to close."""
    with _connect(server) as sock:
        sock.sendall(_request(target, "GET", True, *headers))
        return Reader(sock).rest()


def _stats(server: CherootServer) -> Dict[str, Any]:
    (head, body), = _exchange(server, ("GET", "/__stats__"))
    return json.loads(body)


def _moved(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Tuple[int, int]]:
    """Per path: (transmissions, bytes) between two /__stats__ answers."""
    return {path: (after["stats"][path]["transmissions"] - counts["transmissions"],
                   after["stats"][path]["bytes"] - counts["bytes"])
            for path, counts in before["stats"].items() if path in after["stats"]}


def _kernel(moved: Dict[str, Tuple[int, int]]) -> Tuple[int, int]:
    """(transmissions, bytes) on the zero-copy paths."""
    return (sum(moved[p][0] for p in KERNEL_PATHS if p in moved),
            sum(moved[p][1] for p in KERNEL_PATHS if p in moved))


def _without_date(received: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", received, count=1)


def _eventually(read: Callable[[], Any], want: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def _settled(server: CherootServer) -> int:
    """The server's descriptor count once it has stayed the same for half a second."""
    count, since = server.descriptors(), time.monotonic()
    while time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = server.descriptors()
        if now != count:
            count, since = now, time.monotonic()
    return count


def _log_lines(server: CherootServer, pattern: str) -> List[str]:
    return [line for line in server.log.read_text(errors="replace").splitlines()
            if re.search(pattern, line)]


# -- the tests --------------------------------------------------------------------------

# Requests whose responses stock cheroot frames right: the same bytes must
# come back from fastwrap's server, through the kernel.
SAME_AS_STOCK = [
    ("/plain/files/data.bin", DATA),
    ("/plain/files/data.bin?offset=1000", DATA[1000:]),
    ("/flask/files/data.bin", DATA),
    ("/django/files/data.bin", DATA),
    ("/gen/file?skip=1000&cl=" + str(SIZE - 1000), DATA[1000:]),
]


@pytest.mark.parametrize("target,expected", SAME_AS_STOCK,
                         ids=["plain", "plain-offset", "flask", "django", "buffered-read"])
def test_file_responses_are_byte_exact_against_stock_cheroot_and_zero_copy(
        server, stock, target, expected):
    before = _stats(server)
    ours = _until_eof(server, target)
    moved = _moved(before, _stats(server))
    theirs = _until_eof(stock, target)
    assert _without_date(ours) == _without_date(theirs)
    head, _, body = ours.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == expected
    assert _kernel(moved) == (1, len(expected)), moved


def test_flask_range_is_byte_exact_against_stock_and_zero_copy(server, stock):
    before = _stats(server)
    ours = _until_eof(server, "/flask/files/data.bin", "Range: bytes=1000-1999")
    moved = _moved(before, _stats(server))
    assert _without_date(ours) == _without_date(
        _until_eof(stock, "/flask/files/data.bin", "Range: bytes=1000-1999"))
    head, _, body = ours.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ") and body == DATA[1000:2000]
    assert _kernel(moved) == (1, 1000)


def test_empty_file_is_a_zero_length_200_and_the_connection_goes_on(server, stock):
    assert _without_date(_until_eof(server, "/plain/files/empty.bin")) == \
        _without_date(_until_eof(stock, "/plain/files/empty.bin"))
    (head, body), (head2, body2) = _exchange(
        server, ("GET", "/plain/files/empty.bin"), ("GET", "/plain/files/data.bin"))
    assert head.startswith(b"HTTP/1.1 200 ") and _header(head, "content-length") == "0"
    assert body == b"" and body2 == DATA


def test_without_content_length_one_is_set_where_stock_cheroot_chunks(server, stock):
    (head, body), (head2, body2) = _exchange(
        server, ("GET", "/plain/files/data.bin?nocl=1"), ("GET", "/plain/files/data.bin"))
    assert _header(head, "content-length") == str(SIZE) and body == DATA
    assert _header(head, "transfer-encoding") is None and body2 == DATA
    stock_head = _until_eof(stock, "/plain/files/data.bin?nocl=1").partition(b"\r\n\r\n")[0]
    assert _header(stock_head, "transfer-encoding") == "chunked"


def test_keep_alive_requests_after_file_responses_are_framed_exactly(server):
    responses = _exchange(server,
                          ("GET", "/plain/files/data.bin"),
                          ("GET", "/gen/file?cl=1000"),
                          ("HEAD", "/django/files/data.bin"),
                          ("GET", "/flask/files/data.bin"),
                          ("GET", "/gen/file?skip=5"),
                          ("GET", "/__stats__"))
    bodies = [body for _, body in responses]
    assert bodies[:5] == [DATA, DATA[:1000], b"", DATA, DATA[5:]]
    assert json.loads(bodies[5])["stats"]


@pytest.mark.parametrize("target", ["/plain/files/data.bin", "/flask/files/data.bin",
                                    "/django/files/data.bin", "/gen/file"])
def test_head_sends_no_body_and_the_get_content_length(server, target):
    before = _stats(server)
    (head, _), (_, body) = _exchange(server, ("HEAD", target), ("GET", "/gen/file?cl=7"))
    assert head.startswith(b"HTTP/1.1 200 ") and _header(head, "content-length") == str(SIZE)
    # The next response on the connection starts where the HEAD answer ended.
    assert body == DATA[:7]
    assert _kernel(_moved(before, _stats(server))) == (1, 7)


@pytest.mark.parametrize("query", ["status=304", "status=204", "status=304&cl=" + str(SIZE)])
def test_304_and_204_send_no_body(server, query):
    (head, _), (_, body) = _exchange(server, ("GET", f"/gen/file?{query}"),
                                     ("GET", "/gen/file?cl=3"))
    assert head.startswith(b"HTTP/1.1 " + query[7:10].encode())
    assert body == DATA[:3]


def test_flask_304_on_a_matching_etag(server):
    (head, _), = _exchange(server, ("HEAD", "/flask/files/data.bin"))
    etag = _header(head, "etag")
    with _connect(server) as sock:
        sock.sendall(_request("/flask/files/data.bin", "GET", True, f"If-None-Match: {etag}"))
        received = Reader(sock).rest()
    assert received.startswith(b"HTTP/1.1 304 ") and received.endswith(b"\r\n\r\n")


def test_content_length_smaller_than_the_file_sends_exactly_that_many(server):
    before = _stats(server)
    (_, body), (_, body2) = _exchange(server, ("GET", "/gen/file?cl=1000&skip=10"),
                                      ("GET", "/gen/file?cl=5"))
    assert body == DATA[10:1010] and body2 == DATA[:5]
    assert _kernel(_moved(before, _stats(server))) == (2, 1005)


def test_a_file_shorter_than_its_content_length_answers_500_never_a_short_200(server):
    received = _until_eof(server, f"/gen/file?cl={SIZE + 10}")
    assert received.startswith(b"HTTP/1.1 500 "), received[:200]
    assert DATA[:100] not in received
    (_, body), = _exchange(server, ("GET", "/gen/file?cl=4"))
    assert body == DATA[:4]


@pytest.mark.parametrize("cl", [None, 10 + 2000])
def test_a_file_after_write_gets_only_what_is_left_of_the_content_length(server, cl):
    query = "write=10" + ("" if cl is None else f"&cl={cl}")
    if cl is None:
        received = _until_eof(server, f"/gen/file?{query}")
        head, _, body = received.partition(b"\r\n\r\n")
        assert _header(head, "transfer-encoding") == "chunked"  # cheroot framed it
        assert _dechunk(body) == b"w" * 10 + DATA
    else:
        (_, body), (_, body2) = _exchange(server, ("GET", f"/gen/file?{query}"),
                                          ("GET", "/gen/file?cl=2"))
        assert body == b"w" * 10 + DATA[:2000] and body2 == DATA[:2]


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, body = out + body[:n], body[n + 2:]


def test_a_file_shrinking_mid_send_closes_the_connection(server, root):
    name = f"shrinks-{uuid.uuid4().hex}.bin"
    path = root / name
    shutil.copyfile(root / "big.bin", path)
    keep = 16 << 20
    try:
        with _connect(server, rcvbuf=16384) as sock:
            sock.sendall(_request(f"/plain/files/{name}"))
            reader = Reader(sock)
            while b"\r\n\r\n" not in reader.buffer:
                assert reader._fill()
            os.truncate(path, keep)  # the client has read far less than this
            received = reader.rest()  # until the server closes
    finally:
        path.unlink()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and _header(head, "content-length") == str(BIG)
    # Pages sendfile queued before the truncation still leave (sendfile(2),
    # NOTES): the body may run past the new end, never to the promised length.
    assert keep <= len(body) < BIG and body == (root / "big.bin").read_bytes()[:len(body)]
    assert _eventually(lambda: len(_log_lines(server, f"/files/{name}: the file ended")), 1)
    (_, body), = _exchange(server, ("GET", "/gen/file?cl=9"))
    assert body == DATA[:9]


def test_a_client_leaving_mid_body_leaves_the_server_serving_and_no_descriptor_open(server):
    _exchange(server, ("GET", "/plain/files/data.bin"))
    baseline = _settled(server)
    logged = len(server.log.read_bytes())
    for _ in range(3):
        with _connect(server, rcvbuf=4096) as sock:
            sock.sendall(_request("/plain/files/big.bin"))
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed: reset mid-file
    (_, body), = _exchange(server, ("GET", "/plain/files/data.bin"))
    assert body == DATA
    assert _eventually(server.descriptors, baseline) == baseline
    # A client that leaves is no error of the server's: only fastwrap's debug
    # lines, each saying how far the body got.
    lines = server.log.read_bytes()[logged:].decode().splitlines()
    assert all(line.startswith("DEBUG fastwrap.cheroot: GET /plain/files/") for line in lines)
    cut = [line for line in lines if "big.bin" in line]
    assert len(cut) == 3 and all(re.search(r"\d+ body bytes by \w+, cut off by "
                                           r"(BrokenPipeError|ConnectionResetError)$", line)
                                 for line in cut), cut


def test_each_file_response_logs_the_path_that_carried_it(server):
    _exchange(server, ("GET", "/plain/files/data.bin"),
              ("HEAD", "/django/files/data.bin"))
    lines = _log_lines(server, r"^DEBUG fastwrap\.cheroot: (GET|HEAD) /")
    assert any(re.search(rf"GET /plain/files/data\.bin: 200 OK, {SIZE} body bytes by "
                         rf"({'|'.join(KERNEL_PATHS)})$", line) for line in lines), lines
    assert any(line.endswith("HEAD /django/files/data.bin: 200 OK, 0 body bytes by -")
               for line in lines), lines


def test_tls_bodies_are_byte_exact_and_never_take_a_kernel_path(tls_server):
    before = _stats(tls_server)
    responses = _exchange(tls_server, ("GET", "/plain/files/data.bin"),
                          ("HEAD", "/flask/files/data.bin"),
                          ("GET", "/django/files/data.bin"),
                          ("GET", "/gen/file?cl=1000&skip=3"))
    assert [body for _, body in responses] == [DATA, b"", DATA, DATA[3:1003]]
    moved = _moved(before, _stats(tls_server))
    assert _kernel(moved) == (0, 0)
    assert sum(bytes_ for _, bytes_ in moved.values()) == 2 * SIZE + 1000
    lines = _log_lines(tls_server, rf"GET /(plain|django)/files/data\.bin: 200 OK, {SIZE} "
                                   "body bytes by ")
    assert len(lines) == 2 and not any(line.endswith(KERNEL_PATHS) for line in lines), lines


def test_tls_short_file_closes_the_connection_without_a_short_200(tls_server):
    with _connect(tls_server) as sock:
        sock.sendall(_request(f"/gen/file?cl={SIZE + 1}"))
        received = Reader(sock).rest()
    assert received.startswith(b"HTTP/1.1 500 ")


@pytest.mark.parametrize("engine_env", ENGINES)
def test_install_sends_a_stock_servers_files_through_fastwrap(root, engine_env):
    with serve_cheroot("apps_cheroot:app", "installed", env=_env(root, engine_env)) as s:
        before = _stats(s)
        (_, body), = _exchange(s, ("GET", "/flask/files/data.bin"))
        assert body == DATA
        assert _kernel(_moved(before, _stats(s))) == (1, SIZE)


def test_a_body_of_unknown_length_ends_with_the_connection_never_chunked(server, stock):
    received = _until_eof(server, "/pipe")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == PIPE_DATA
    assert _header(head, "transfer-encoding") is None and _header(head, "content-length") is None
    assert _header(head, "connection") == "close"
    # Asked to stay alive, the server still closes after such a body.
    with _connect(server) as sock:
        sock.sendall(_request("/pipe"))
        received = Reader(sock).rest()
    assert received.partition(b"\r\n\r\n")[2] == PIPE_DATA
    stock_head = _until_eof(stock, "/pipe").partition(b"\r\n\r\n")[0]
    assert _header(stock_head, "transfer-encoding") == "chunked"


@pytest.mark.parametrize("engine_env", ENGINES)
def test_a_client_that_stops_reading_is_dropped_after_the_timeout_as_cheroot_does(
        root, engine_env):
    with serve_cheroot("apps_cheroot:app", "fastwrap", env=_env(root, engine_env),
                       timeout=1) as s:
        baseline = _settled(s)
        with _connect(s, rcvbuf=4096) as sock:
            sock.sendall(_request("/plain/files/big.bin"))
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
            cut = _eventually(
                lambda: len(_log_lines(s, r"big\.bin: .* cut off by TimeoutError$")), 1, 15)
            assert cut == 1, s.log.read_text()
        assert _eventually(s.descriptors, baseline) == baseline
        # As for cheroot's own timeouts: no traceback in its error log.
        assert "Traceback" not in s.log.read_text()
        (_, body), = _exchange(s, ("GET", "/gen/file?cl=6"))
        assert body == DATA[:6]


def test_cherrypy_after_install_sends_grafted_applications_files_through_fastwrap(root):
    pytest.importorskip("cherrypy", reason="cherrypy is in the project's test extra")
    with serve_cheroot("apps_cheroot:app", "cherrypy", env=_env(root, {})) as s:
        before = _stats(s)
        responses = _exchange(s, ("GET", "/flask/files/data.bin"),
                              ("GET", "/django/files/data.bin"),
                              ("HEAD", "/plain/files/data.bin"))
        assert [body for _, body in responses] == [DATA, DATA, b""]
        assert _kernel(_moved(before, _stats(s))) == (2, 2 * SIZE)
