"""fastwrap.waitress in a real waitress server (in a subprocess), against stock waitress.

Every test runs against both engines: the compiled one and, with
FASTWRAP_NO_EXTENSIONS=1 in the server's environment, the pure-Python one.
Responses are compared byte for byte with stock waitress's for the same
requests (the Date header aside) wherever stock waitress is right, and the
server's fastwrap.stats() (on a route of the test app) shows which path
carried the bytes.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("waitress", reason="waitress is in the project's test extra")

import json  # noqa: E402

from _children import HANG  # noqa: E402
from _serve_waitress import ServerURL, serve_waitress  # noqa: E402
from _support import needs_linux, random_bytes  # noqa: E402
from conftest import import_compiled_engine  # noqa: E402
from test_waiting import evict, resident_pages  # noqa: E402

SMALL = random_bytes(1_200_003, seed=81)
BIG_SIZE = 64 * 1024 * 1024  # far beyond the socket buffers of both ends
APP = "_waitress_apps:app"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Iterator[Path]:
    made = tmp_path_factory.mktemp("waitress-root")
    (made / "small.bin").write_bytes(SMALL)
    (made / "empty.bin").write_bytes(b"")
    with open(made / "big.bin", "wb") as f:  # sparse: large, and cheap to make
        f.truncate(BIG_SIZE)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="module")
def stock(root) -> Iterator[ServerURL]:
    with serve_waitress(APP, "stock", env={"FASTWRAP_E2E_ROOT": str(root)}) as url:
        yield url


@pytest.fixture(scope="module", params=["cython", "python"])
def server(request, root) -> Iterator[ServerURL]:
    env = {"FASTWRAP_E2E_ROOT": str(root)}
    if request.param == "python":
        env["FASTWRAP_NO_EXTENSIONS"] = "1"
    elif import_compiled_engine() is None:
        pytest.skip("compiled engine not built")
    with serve_waitress(APP, "fastwrap", env=env) as url:
        url.implementation = request.param
        yield url


# -- clients -----------------------------------------------------------------------------

def connect(url: ServerURL) -> socket.socket:
    return socket.create_connection(("127.0.0.1", url.port), timeout=HANG)


def request(target: str, method: str = "GET", close: bool = False,
            headers: Dict[str, str] = {}) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exchange(url: ServerURL, raw: bytes) -> bytes:
    """Send *raw* on a fresh connection; all that comes back until the server closes."""
    with connect(url) as sock:
        sock.sendall(raw)
        return until_closed(sock)


def undated(raw: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", raw)


def split(raw: bytes, methods: List[str]) -> List[Tuple[bytes, bytes]]:
    """(head, body) of each response in *raw*, for requests of *methods*, in order."""
    out = []
    for method in methods:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, head
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif length:
            n = int(length.group(1))
            body, raw = raw[:n], raw[n:]
        else:
            body, raw = raw, b""
        out.append((head, body))
    assert raw == b"", raw[:200]
    return out


def stats(url: ServerURL) -> Dict[str, object]:
    raw = exchange(url, request("/__stats__", close=True))
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def sendfile_delta(before: Dict, after: Dict) -> Tuple[int, int]:
    b, a = before["stats"]["sendfile"], after["stats"]["sendfile"]
    return a["transmissions"] - b["transmissions"], a["bytes"] - b["bytes"]


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.02)


def server_fds(url: ServerURL) -> int:
    return len(os.listdir(f"/proc/{url.pid}/fd"))


# -- the engine, the path, the bytes ----------------------------------------------------------

def test_server_runs_the_requested_engine(server):
    assert stats(server)["implementation"] == server.implementation


FILE_TARGETS = [
    ("/flask/files/small.bin", SMALL),
    ("/django/files/small.bin", SMALL),
    ("/plain/files/small.bin", SMALL),
    ("/file?name=small.bin&skip=77", SMALL[77:]),          # tell() ahead of the fd's offset
    ("/file?name=small.bin&skip=77&cl=none", SMALL[77:]),  # Content-Length from the file
    ("/file?name=small.bin&cl=5000", SMALL[:5000]),        # Content-Length below the file's
]


@pytest.mark.parametrize("target, expected", FILE_TARGETS,
                         ids=[target for target, _ in FILE_TARGETS])
def test_file_response_is_byte_exact_against_stock_and_takes_sendfile(server, stock, target,
                                                                      expected):
    before = stats(server)
    ours = exchange(server, request(target, close=True))
    after = stats(server)
    theirs = exchange(stock, request(target, close=True))
    assert undated(ours) == undated(theirs)
    assert ours.partition(b"\r\n\r\n")[2] == expected
    assert sendfile_delta(before, after) == (1, len(expected))


def test_flask_range_is_byte_exact_and_zero_copy(server, stock):
    raw = request("/flask/files/small.bin", close=True, headers={"Range": "bytes=1000-200999"})
    before = stats(server)
    ours = exchange(server, raw)
    after = stats(server)
    assert undated(ours) == undated(exchange(stock, raw))
    assert ours.startswith(b"HTTP/1.1 206 ")
    assert ours.partition(b"\r\n\r\n")[2] == SMALL[1000:201000]
    assert sendfile_delta(before, after) == (1, 200000)


def test_flask_304_is_byte_exact_against_stock(server, stock):
    head = exchange(server, request("/flask/files/small.bin", "HEAD", close=True))
    etag = re.search(rb"\r\nEtag: ([^\r]*)", head, re.I).group(1).decode()
    raw = request("/flask/files/small.bin", close=True, headers={"If-None-Match": etag})
    ours = exchange(server, raw)
    assert ours.startswith(b"HTTP/1.1 304 ")
    assert undated(ours) == undated(exchange(stock, raw))


def test_debug_log_line_names_the_path(server):
    exchange(server, request("/file?name=small.bin&skip=5", close=True))
    line = f"DEBUG:waitress:fastwrap: GET /file: {len(SMALL) - 5} of {len(SMALL) - 5} " \
           "body bytes by sendfile"
    wait_for(lambda: line in server.log(), f"{line!r} in the server's log")


def test_responses_that_are_not_files_are_waitress_own(server, stock):
    # An iterated body goes through waitress's buffers as stock: same bytes,
    # and the engine is not involved.
    target = "/small?size=70000&parts=7"
    before = stats(server)
    ours = exchange(server, request(target, close=True))
    after = stats(server)
    assert undated(ours) == undated(exchange(stock, request(target, close=True)))
    assert sum(v["transmissions"] for v in after["stats"].values()) == \
        sum(v["transmissions"] for v in before["stats"].values())


# -- no body where HTTP forbids one --------------------------------------------------------------

def test_head_of_a_file_has_its_length_and_no_body(server, stock):
    # HEAD, then a GET on the same connection: the GET's response follows the
    # HEAD's headers at once.  (Stock waitress sends the file after a HEAD.)
    raw = request("/plain/files/small.bin", "HEAD") + request("/small?size=10", close=True)
    (head, _), (second, body) = split(exchange(server, raw), ["HEAD", "GET"])
    assert f"\r\nContent-Length: {len(SMALL)}".encode() in head
    assert second.startswith(b"HTTP/1.1 200 ") and body == bytes(range(10))
    assert undated(exchange(stock, raw)).partition(b"\r\n\r\n")[0] == undated(head)


def test_head_of_an_iterated_response_has_no_body_either(server, stock):
    # Stock waitress sends an iterated body after a HEAD's headers, where the
    # client reads it as the next response.
    raw = request("/small?size=300&parts=3", "HEAD") + request("/small?size=7", close=True)
    (head, _), (_, body) = split(exchange(server, raw), ["HEAD", "GET"])
    assert b"\r\nContent-Length: 300" in head and body == bytes(range(7))
    assert undated(exchange(stock, raw)).startswith(undated(head) + b"\r\n\r\n")


def test_head_without_content_length_gets_the_files(server):
    raw = request("/file?name=small.bin&cl=none&skip=3", "HEAD") + request("/small?size=4",
                                                                             close=True)
    (head, _), (_, body) = split(exchange(server, raw), ["HEAD", "GET"])
    assert f"\r\nContent-Length: {len(SMALL) - 3}".encode() in head
    assert body == bytes(range(4))


def test_head_of_a_file_of_unknown_length_has_no_body(server):
    # No length to give (an empty file may be a /proc file): waitress
    # announces a chunked body, and stock waitress then sends its terminator.
    raw = exchange(server, request("/file?name=empty.bin&cl=none", "HEAD", close=True))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == b""


def test_304_file_response_has_no_body(server):
    raw = request("/file?name=small.bin&status=304") + request("/small?size=12", close=True)
    ours = exchange(server, raw)
    first, _, rest = ours.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 304 ")
    assert b"Content-Length" not in first and b"Transfer-Encoding" not in first
    # waitress closes after a 304 without a length, as it does for any: no body either way.
    assert rest == b"" or rest.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("prefix", ["/flask", "/django", "/plain"])
def test_empty_file_is_byte_exact_against_stock(server, stock, prefix):
    raw = request(f"{prefix}/files/empty.bin", close=True)
    ours = exchange(server, raw)
    assert ours.endswith(b"\r\nContent-Length: 0\r\n\r\n") or b"\r\nContent-Length: 0\r\n" in ours
    assert ours.partition(b"\r\n\r\n")[2] == b""
    assert undated(ours) == undated(exchange(stock, raw))


# -- short files ----------------------------------------------------------------------------

def test_file_shorter_than_its_content_length_before_the_first_byte_is_a_500(server):
    promised = len(SMALL) + 1000
    raw = exchange(server, request(f"/file?name=small.bin&cl={promised}", close=True))
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert SMALL[:1000] not in raw
    assert f"fewer than the Content-Length {promised}" in server.log()


def _shrink_mid_send(url: ServerURL, root: Path, name: str,
                     patience: float = 10) -> Tuple[bytes, float]:
    """GET a 64 MiB file, cut it to 1 MiB once the socket buffers are full, read on.

    Returns what arrived and how long after the cut the connection ended
    (HANG if it did not within *patience* seconds: the caller's assertion says which).
    """
    path = root / name
    with open(path, "wb") as f:
        f.truncate(BIG_SIZE)
    with connect(url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request(f"/plain/files/{name}"))  # keep-alive: only the server can end it
        received = sock.recv(64 * 1024)
        time.sleep(0.5)  # the server fills both buffers and waits for the client
        os.truncate(path, 1024 * 1024)
        cut = time.monotonic()
        sock.settimeout(0.5)
        chunks = [received]
        while time.monotonic() - cut < patience:
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not chunk:
                return b"".join(chunks), time.monotonic() - cut
            chunks.append(chunk)
        return b"".join(chunks), HANG


def test_file_shrinking_mid_send_closes_the_connection_promptly(server, root):
    data, after = _shrink_mid_send(server, root, f"shrink-{server.implementation}.bin")
    # Stock waitress leaves the client waiting for channel_timeout (120 s).
    assert after < 5, "the connection stayed open after the file shrank"
    head, _, body = data.partition(b"\r\n\r\n")
    assert f"\r\nContent-Length: {BIG_SIZE}".encode() in head
    assert 0 < len(body) < BIG_SIZE and body.count(0) == len(body)
    wait_for(lambda: f"of {BIG_SIZE} promised bytes; closing the connection" in server.log(),
             "the short file logged")


def test_stock_waitress_waits_on_a_shrunk_file(stock, root):
    # What the test above guards against: stock waitress keeps the connection.
    _, after = _shrink_mid_send(stock, root, "shrink-stock.bin", patience=3)
    assert after == HANG


# -- connections ---------------------------------------------------------------------------

def test_pipelined_keep_alive_requests_after_a_file_response(server, stock):
    raw = (request("/plain/files/small.bin") + request("/small?size=300&parts=2")
           + request("/file?name=small.bin&skip=11&cl=1000") + request("/flask/files/small.bin")
           + request("/small?size=5", close=True))
    ours = exchange(server, raw)
    assert undated(ours) == undated(exchange(stock, raw))
    bodies = [body for _, body in split(ours, ["GET"] * 5)]
    assert bodies == [SMALL, bytes(i % 251 for i in range(300)), SMALL[11:1011], SMALL,
                      bytes(range(5))]


def test_keep_alive_connection_serves_files_one_after_another(server):
    with connect(server) as sock:
        for skip in (0, 1, 1000):
            sock.sendall(request(f"/file?name=small.bin&skip={skip}"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            body = bytearray()
            while len(body) < n:
                body += sock.recv(n - len(body))
            assert bytes(body) == SMALL[skip:]


@needs_linux
def test_clients_leaving_mid_body_leave_no_descriptor_behind(server, root):
    exchange(server, request("/small", close=True))
    baseline = server_fds(server)
    logged = len(server.log())
    for _ in range(5):
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request("/plain/files/big.bin"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        # A reset, not a FIN: the server's next write fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # The server goes on serving, and its descriptors come back to the baseline.
    ours = exchange(server, request("/plain/files/small.bin", close=True))
    assert ours.partition(b"\r\n\r\n")[2] == SMALL
    wait_for(lambda: server_fds(server) <= baseline, "descriptors back to the baseline")
    log = server.log()[logged:]
    assert "Traceback" not in log
    # The transmissions ended where the clients left.
    assert log.count("GET /files/big.bin: ") == 5
    assert log.count(f"of {BIG_SIZE} body bytes by sendfile, then the connection closed") == 5


@needs_linux
@pytest.mark.parametrize("engine_env", [{}, {"FASTWRAP_NO_EXTENSIONS": "1"}],
                         ids=["cython", "python"])
def test_cold_file_is_read_by_fetch_threads_and_exact(root, engine_env):
    path = root / f"cold-{len(engine_env)}.bin"
    data = random_bytes(8 * 1024 * 1024 + 3, seed=82)
    path.write_bytes(data)
    evict(str(path))
    if resident_pages(str(path)):
        pytest.skip("this filesystem keeps the file in memory")

    def fetch_threads(url: ServerURL) -> int:
        names = exchange(url, request("/__threads__", close=True)).partition(b"\r\n\r\n")[2]
        return names.count(b"fastwrap-fetch")

    # A server of its own: its fetch threads start at the first wait on the disk.
    with serve_waitress(APP, "fastwrap", env=dict(engine_env, FASTWRAP_E2E_ROOT=str(root))) \
            as url:
        exchange(url, request("/plain/files/small.bin", close=True))  # from the page cache
        assert fetch_threads(url) == 0
        ours = exchange(url, request(f"/plain/files/{path.name}", close=True))
        assert ours.partition(b"\r\n\r\n")[2] == data
        assert fetch_threads(url) >= 1
        line = f"GET /files/{path.name}: {len(data)} of {len(data)} body bytes by sendfile"
        wait_for(lambda: line in url.log(), "the cold file's debug line")


# -- turning it on -------------------------------------------------------------------------------

def test_command_line_is_waitress_serve_with_fastwrap(root, tmp_path):
    env = dict(os.environ, FASTWRAP_E2E_ROOT=str(root), PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent)]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastwrap.waitress",
                                 "--listen=127.0.0.1:0", APP],
                                stdin=subprocess.DEVNULL, stderr=err, env=env)
    try:
        def listening() -> bool:
            return "Serving on http://127.0.0.1:" in log.read_text()
        wait_for(listening, "waitress's 'Serving on' line")
        port = int(re.search(r"Serving on http://127.0.0.1:(\d+)", log.read_text()).group(1))
        url = ServerURL(f"http://127.0.0.1:{port}")
        ours = exchange(url, request("/plain/files/small.bin", close=True))
        assert ours.partition(b"\r\n\r\n")[2] == SMALL
        assert stats(url)["stats"]["sendfile"]["bytes"] == len(SMALL)
    finally:
        proc.terminate()
        proc.wait(HANG)


def test_command_line_help_names_itself():
    proc = subprocess.run([sys.executable, "-m", "fastwrap.waitress", "--help"],
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0
    assert "python -m fastwrap.waitress" in proc.stdout
