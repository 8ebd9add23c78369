"""gunicorn with ``-k fastwrap.gunicorn.SyncWorker`` / ``ThreadWorker``, end to end.

Every test talks to a real gunicorn process on 127.0.0.1 (see
_serve_gunicorn.py) serving apps_gunicorn.py, and checks the bytes the
client got, the bytes gunicorn logged, and the path fastwrap's counters in
the worker say the body took.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import fastwrap
from _serve_gunicorn import (GunicornExited, certificate_authority, client_tls_context,
                             serve_gunicorn)
from _support import random_bytes

gunicorn = pytest.importorskip("gunicorn", reason="gunicorn is in the project's test extra")

DATA = random_bytes(3_000_000 + 123, seed=3333)
SIZE = len(DATA)
from fastwrap.gunicorn import GTHREAD_MINIMUM, _VERSION as GUNICORN_VERSION  # noqa: E402

# fastwrap's gthread worker refuses gunicorns older than 27 (see
# test_thread_worker_boots_only_on_a_gunicorn_that_frames_keep_alive_right).
GTHREAD_WORKS = GUNICORN_VERSION >= GTHREAD_MINIMUM
WORKERS = ["sync", "gthread"] if GTHREAD_WORKS else ["sync"]
ACCESS_FORMAT = "%(m)s %(U)s?%(q)s %(s)s B=%(B)s b=%(b)s"
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
KERNEL_PATHS = ("sendfile", "splice")


class Server:
    def __init__(self, url: str, worker: Optional[str], logs: Path) -> None:
        self.url = url
        self.worker = worker
        self.host, port = url.rsplit("/", 1)[1].split(":")
        self.port = int(port)
        self.tls = url.startswith("https")
        self.access_log = logs / "access.log"
        self.error_log = logs / "error.log"

    def connection(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=60,
                                               context=client_tls_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def get(self, target: str, method: str = "GET") -> Tuple[http.client.HTTPResponse, bytes]:
        conn = self.connection()
        try:
            conn.request(method, target)
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def fetch(self, target: str, *headers: str) -> Tuple[bytes, bytes]:
        """(headers, body) of a GET that asks to close, read until EOF.

        gunicorn closes only after the request is done, fastwrap's counters
        included, so a /__stats__ asked after this sees this request.
        """
        received = _until_eof(self, f"GET {target}", headers)
        head, _, body = received.partition(b"\r\n\r\n")
        assert len(body) == _header(head, "content-length", 0)
        return head, body

    def stats(self, conn: Optional[http.client.HTTPConnection] = None) -> Dict[str, Any]:
        """fastwrap.stats() of the worker answering (on *conn*: the one holding it)."""
        if conn is None:
            response, body = self.get("/__stats__")
        else:
            conn.request("GET", "/__stats__")
            response = conn.getresponse()
            body = response.read()
        assert response.status == 200
        return json.loads(body)

    def access_lines(self, marker: str) -> List[str]:
        return [line for line in self.access_log.read_text().splitlines() if marker in line]



def _server(tmp_path_factory, data_file: Path, worker: Optional[str], tls: bool = False,
            env: Optional[Dict[str, str]] = None, extra: Tuple[str, ...] = (),
            config: Optional[str] = None):
    logs = tmp_path_factory.mktemp("gunicorn")
    args = ("--access-logfile", str(logs / "access.log"), "--access-logformat", ACCESS_FORMAT,
            "--error-logfile", str(logs / "error.log"), *extra)
    environ = {"FASTWRAP_TEST_FILE": str(data_file), **(env or {})}
    with serve_gunicorn("apps_gunicorn:app", worker=worker, tls=tls, extra_args=args,
                        env=environ, config=config) as url:
        yield Server(url, worker, logs)
    shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gunicorn-data")
    path = directory / "data.bin"
    path.write_bytes(DATA)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module", params=WORKERS)
def server(request, tmp_path_factory, data_file):
    yield from _server(tmp_path_factory, data_file, request.param)


@pytest.fixture(scope="module", params=WORKERS)
def tls_server(request, tmp_path_factory, data_file):
    yield from _server(tmp_path_factory, data_file, request.param, tls=True)


def _moved(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Tuple[int, int]]:
    """Per path: (transmissions, bytes) between two /__stats__ answers."""
    return {path: (after["stats"][path]["transmissions"] - counts["transmissions"],
                   after["stats"][path]["bytes"] - counts["bytes"])
            for path, counts in before["stats"].items()}


def _marker() -> str:
    return uuid.uuid4().hex


def _raw(server: Server, request_lines: List[str]) -> List[Tuple[bytes, bytes]]:
    """Send *request_lines* one after the other on one connection, the last one
    asking to close, and read until EOF; return (headers, body) per response.

    Stops sending when a response says ``Connection: close`` (gunicorn's sync
    worker says so every time).  Fails if any byte arrives beyond the
    Content-Length framing of the responses.
    """
    sock = socket.create_connection((server.host, server.port), timeout=60)
    if server.tls:
        sock = client_tls_context().wrap_socket(sock, server_hostname=server.host)
    responses = []
    with sock:
        for i, line in enumerate(request_lines):
            last = i == len(request_lines) - 1
            sock.sendall(f"{line} HTTP/1.1\r\nHost: t\r\n"
                         f"{'Connection: close' if last else ''}\r\n\r\n".encode())
            head, body, extra = _read_response(sock, line.split()[0])
            responses.append((head, body))
            if last or b"connection: close" in head.lower():
                break
            assert not extra, "bytes beyond the Content-Length"
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                # gunicorn before 27 may end a gthread connection with a
                # reset rather than a FIN once the last response is out.
                break
            if not chunk:
                break
            extra += chunk
    assert extra == b"", f"{len(extra)} bytes after the last response"
    return responses


def _until_eof(server: Server, request_line: str, headers: Tuple[str, ...] = ()) -> bytes:
    """Everything the server sends for one request that asks to close."""
    sock = socket.create_connection((server.host, server.port), timeout=60)
    if server.tls:
        sock = client_tls_context().wrap_socket(sock, server_hostname=server.host)
    received = b""
    extra = "".join(f"{h}\r\n" for h in headers)
    with sock:
        sock.sendall(f"{request_line} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n"
                     .encode())
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return received
            received += chunk


def _read_response(sock: socket.socket, method: str) -> Tuple[bytes, bytes, bytes]:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(1 << 16)
        assert chunk, f"the connection closed inside the headers: {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    status = int(head.split(None, 2)[1])
    no_body = method == "HEAD" or status in (204, 304) or status < 200
    length = 0 if no_body else _header(head, "content-length", 0)
    while len(body) < length:
        chunk = sock.recv(1 << 16)
        assert chunk, "the connection closed inside the body"
        body += chunk
    return head, body[:length], body[length:]


def _header(head: bytes, name: str, default: Any = None) -> Any:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == name:
            value = value.strip()
            return int(value) if isinstance(default, int) else value
    return default


def _curl(server: Server, target: str, tmp_path: Path, *options: str) -> Tuple[int, bytes, str]:
    body, headers = tmp_path / "body", tmp_path / "headers"
    args = [CURL, "--silent", "--http1.1", "--output", str(body), "--dump-header", str(headers)]
    if server.tls:
        ca = tmp_path / "ca.pem"
        certificate_authority().cert_pem.write_to_path(str(ca))
        args += ["--cacert", str(ca)]
    done = subprocess.run([*args, *options, server.url + target], timeout=60)
    return (done.returncode, body.read_bytes() if body.exists() else b"",
            headers.read_text(errors="replace") if headers.exists() else "")


# -- bodies -------------------------------------------------------------------------

def test_plain_file_wrapper_is_sent_byte_exact_by_sendfile(server):
    before = server.stats()
    assert before["implementation"] == fastwrap.IMPLEMENTATION
    head, body = server.fetch(f"/file?cl={SIZE}")
    after = server.stats()
    assert head.startswith(b"HTTP/1.1 200 ") and body == DATA
    moved = _moved(before, after)
    assert moved["sendfile"] == (1, SIZE)
    assert all(moved[p] == (0, 0) for p in moved if p != "sendfile")


@needs_curl
def test_curl_gets_the_file_byte_exact(server, tmp_path):
    code, body, headers = _curl(server, "/file?skip=7", tmp_path)
    assert code == 0
    assert body == DATA[7:]
    assert f"content-length: {SIZE - 7}" in headers.lower()


@pytest.mark.parametrize("skip", [1, 10, 5000, 8192, SIZE - 1, SIZE])
def test_body_starts_at_tell_not_at_the_raw_descriptor_offset(server, skip):
    # After f.read(skip) a BufferedReader's descriptor is further on than tell().
    response, body = server.get(f"/file?skip={skip}")
    assert response.status == 200
    assert int(response.getheader("Content-Length")) == SIZE - skip
    assert body == DATA[skip:]


def test_without_content_length_one_is_set_from_the_file(server):
    response, body = server.get("/file")
    assert int(response.getheader("Content-Length")) == SIZE
    assert response.getheader("Transfer-Encoding") is None
    assert body == DATA


def test_content_length_smaller_than_the_file_sends_exactly_that_many(server):
    responses = _raw(server, ["GET /file?cl=1000&skip=3", "GET /file?cl=10"])
    head, body = responses[0]
    if server.worker == "sync":  # gunicorn's sync worker closes after every response
        assert len(responses) == 1 and b"Connection: close" in head
    else:  # gthread: the second request went on the same connection
        assert b"Connection: keep-alive" in head
        assert responses[1][1] == DATA[:10]
    assert _header(head, "content-length") == "1000"
    assert body == DATA[3:1003]


def test_keep_alive_carries_on_after_a_truncated_body(server):
    conn = server.connection()
    try:
        conn.request("GET", "/file?cl=1000")
        first = conn.getresponse()
        assert first.read() == DATA[:1000]
        sock = conn.sock
        conn.request("GET", "/file?skip=99&cl=5")
        second = conn.getresponse()
        assert second.read() == DATA[99:104]
        if server.worker == "gthread":
            assert conn.sock is sock, "the second request needed a new connection"
        else:
            assert first.getheader("Connection") == "close"
    finally:
        conn.close()


@pytest.mark.parametrize("target, length", [("/file", SIZE), ("/file?skip=10", SIZE - 10),
                                            ("/file?cl=1000", 1000)])
def test_head_sends_no_body_and_the_get_content_length(server, target, length):
    responses = _raw(server, [f"HEAD {target}", "GET /file?cl=4"])
    head, body = responses[0]
    assert body == b""
    if server.worker == "gthread":
        assert responses[1][1] == DATA[:4]
    assert _header(head, "content-length") == str(length)


@pytest.mark.parametrize("query", ["status=204", f"status=204&cl={SIZE}", "status=304",
                                   f"status=304&cl={SIZE}"])
def test_204_and_304_send_no_body(server, query):
    responses = _raw(server, [f"GET /file?{query}", "GET /file?cl=4"])
    status = query[7:10]
    head = responses[0][0]
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert _header(head, "transfer-encoding") is None
    if status == "204":
        assert _header(head, "content-length") is None  # RFC 9110 forbids one
    else:
        assert _header(head, "content-length") == (str(SIZE) if "cl=" in query else None)
    if server.worker == "gthread":
        assert responses[1][1] == DATA[:4]


# -- a file shorter than its Content-Length ------------------------------------------

@pytest.mark.parametrize("query, promised, skip", [(f"cl={SIZE + 1000}", SIZE + 1000, 0),
                                                   (f"skip=100&cl={SIZE}", SIZE, 100)])
def test_short_file_closes_the_connection_and_is_logged(server, query, promised, skip):
    conn = server.connection()
    try:
        conn.request("GET", f"/file?{query}")
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as info:
            response.read()
    finally:
        conn.close()
    assert info.value.partial == DATA[skip:]
    assert info.value.expected == promised - (SIZE - skip)
    log = server.error_log.read_text()
    assert (f"/file: the file ended after {SIZE - skip} of {promised} promised bytes; "
            "closing the connection") in log


@needs_curl
def test_curl_sees_a_short_file_as_a_partial_transfer(server, tmp_path):
    code, body, _ = _curl(server, f"/file?cl={SIZE + 1}", tmp_path)
    assert code == 18  # CURLE_PARTIAL_FILE: the server closed before Content-Length
    assert body == DATA


@pytest.mark.parametrize("cl", [1000, 100 + SIZE, 100 + SIZE + 7])
def test_a_file_after_write_keeps_the_rules(server, cl):
    # The app wrote 100 bytes with write() before returning the file wrapper.
    responses = _raw(server, [f"GET /file?write=100&cl={cl}", "GET /file?cl=3"]) \
        if cl <= 100 + SIZE else None
    if responses is not None:
        assert responses[0][1] == b"w" * 100 + DATA[:cl - 100]
        if server.worker == "gthread":
            assert responses[1][1] == DATA[:3]
        return
    conn = server.connection()  # keep-alive: only the server's close ends the read
    try:
        conn.request("GET", f"/file?write=100&cl={cl}")
        with pytest.raises(http.client.IncompleteRead) as info:
            conn.getresponse().read()
    finally:
        conn.close()
    assert info.value.partial == b"w" * 100 + DATA
    assert f"the file ended after {100 + SIZE} of {cl} promised bytes" in (
        server.error_log.read_text())


# -- the access log ------------------------------------------------------------------

@pytest.mark.parametrize("method, query, start, stop", [
    ("GET", f"cl={SIZE}", 0, SIZE), ("GET", "skip=10", 10, SIZE), ("GET", "cl=1000", 0, 1000),
    ("HEAD", "", 0, 0), ("GET", "status=304", 0, 0), ("GET", f"cl={SIZE + 50}", 0, SIZE)])
def test_access_log_shows_the_bytes_really_sent(server, method, query, start, stop):
    marker = _marker()
    # Read to EOF on a closing connection: gunicorn logs before it closes.
    received = _until_eof(server, f"{method} /file?{query}&m={marker}")
    assert received.endswith(b"\r\n\r\n" + DATA[start:stop])
    sent = stop - start
    lines = server.access_lines(marker)
    assert len(lines) == 1
    assert lines[0].endswith(f" B={sent} b={sent}"), lines[0]


# -- TLS -----------------------------------------------------------------------------

def test_tls_bodies_are_byte_exact_and_never_use_a_kernel_path(tls_server):
    before = tls_server.stats()
    head, body = tls_server.fetch("/file?skip=10")
    assert body == DATA[10:] and _header(head, "content-length") == str(SIZE - 10)
    responses = _raw(tls_server, ["GET /file?cl=1000", f"GET /file?cl={SIZE}"])
    assert responses[0][1] == DATA[:1000]
    if tls_server.worker == "gthread":
        assert responses[1][1] == DATA
    moved = _moved(before, tls_server.stats())
    assert all(moved[p] == (0, 0) for p in KERNEL_PATHS), moved
    expected = SIZE - 10 + 1000 + (SIZE if tls_server.worker == "gthread" else 0)
    assert sum(b for _, b in moved.values()) == expected


def test_tls_short_file_closes_the_connection(tls_server):
    conn = tls_server.connection()
    try:
        conn.request("GET", f"/file?cl={SIZE + 1}")
        with pytest.raises(http.client.IncompleteRead) as info:
            conn.getresponse().read()
    finally:
        conn.close()
    assert info.value.partial == DATA


@needs_curl
def test_curl_over_tls(tls_server, tmp_path):
    code, body, _ = _curl(tls_server, "/file?skip=3&cl=2000000", tmp_path)
    assert code == 0 and body == DATA[3:2000003]


# -- engines and switches -------------------------------------------------------------

@pytest.mark.parametrize("worker", WORKERS)
def test_pure_python_engine_in_the_worker(tmp_path_factory, data_file, worker):
    for served in _server(tmp_path_factory, data_file, worker,
                          env={"FASTWRAP_NO_EXTENSIONS": "1"}):
        before = served.stats()
        assert before["implementation"] == "python"
        head, body = served.fetch("/file?skip=10")
        assert body == DATA[10:]
        assert _moved(before, served.stats())["sendfile"] == (1, SIZE - 10)
        _said_once_per_worker(served, 1, _boot_line(SYNC if worker == "sync" else THREAD, 4,
                                                    engine="python"))


@pytest.mark.parametrize("worker", WORKERS)
def test_gunicorn_no_sendfile_keeps_fastwrap_off_kernel_paths(tmp_path_factory, data_file,
                                                              worker):
    for served in _server(tmp_path_factory, data_file, worker, extra=("--no-sendfile",)):
        before = served.stats()
        head, body = served.fetch("/file?skip=10")
        assert body == DATA[10:]
        moved = _moved(before, served.stats())
        assert all(moved[p] == (0, 0) for p in KERNEL_PATHS), moved
        assert sum(b for _, b in moved.values()) == SIZE - 10


def test_the_stock_gunicorn_worker_is_left_alone(tmp_path_factory, data_file):
    # A plain "-k sync" server: no fastwrap in the worker, so no bytes counted.
    for served in _server(tmp_path_factory, data_file, "gunicorn.workers.sync.SyncWorker"):
        before = served.stats()
        head, body = served.fetch("/file?cl=1000")
        assert body == DATA[:1000]
        assert _moved(before, served.stats()) == {p: (0, 0) for p in fastwrap.PATHS}


# -- frameworks (the apps of e2e_apps.py) through gunicorn ---------------------------------

@pytest.fixture(scope="module")
def e2e_root(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gunicorn-e2e")
    (directory / "data.bin").write_bytes(DATA)
    with open(directory / "big.bin", "wb") as big:  # sparse: larger than any socket buffer
        big.truncate(256 * 1024 * 1024)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _framework(app: str, worker: str, root: Path):
    with serve_gunicorn(f"e2e_apps:{app}", worker=worker,
                        env={"FASTWRAP_E2E_ROOT": str(root)}) as url:
        yield Server(url, worker, root)


@pytest.mark.parametrize("worker", WORKERS)
def test_flask_send_file_200_head_304_and_a_zero_copy_206(e2e_root, worker):
    pytest.importorskip("flask", reason="flask is in the project's test extra")
    with _framework("flask", worker, e2e_root) as served:
        before = served.stats()
        head, body = served.fetch("/files/data.bin", "Range: bytes=1000-1999")
        assert head.startswith(b"HTTP/1.1 206 ") and body == DATA[1000:2000]
        assert _header(head, "content-range") == f"bytes 1000-1999/{SIZE}"
        # werkzeug's range wrapper did not cost the fast path.
        assert _moved(before, served.stats())["sendfile"] == (1, 1000)
        conn = served.connection()
        try:
            response, body = served.get("/files/data.bin")
            assert response.status == 200 and body == DATA
            response, body = served.get("/files/data.bin", method="HEAD")
            assert body == b"" and int(response.getheader("Content-Length")) == SIZE
            conn = served.connection()
            conn.request("GET", "/files/data.bin",
                         headers={"If-None-Match": response.getheader("ETag")})
            unchanged = conn.getresponse()
            assert unchanged.status == 304 and unchanged.read() == b""
        finally:
            conn.close()


def _eventually(read: Any, want: int) -> int:
    """Poll *read* until it gives *want* (or 30 s pass); return its last value."""
    deadline = time.monotonic() + 30
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


@pytest.mark.parametrize("worker", WORKERS)
def test_django_request_finished_fires_once_also_when_the_client_leaves(e2e_root, worker):
    pytest.importorskip("django", reason="django is in the project's test extra")
    with _framework("django", worker, e2e_root) as served:
        def finished() -> int:
            return int(served.get("/__django_finished__")[1])

        client = socket.create_connection((served.host, served.port), timeout=60)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 200")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # reset mid-file
        assert _eventually(finished, 1) == 1
        response, body = served.get("/files/data.bin")
        assert body == DATA
        assert _eventually(finished, 2) == 2


@pytest.mark.parametrize("worker", WORKERS)
def test_whitenoise_is_served_by_sendfile(e2e_root, worker):
    pytest.importorskip("whitenoise", reason="whitenoise is in the project's test extra")
    with _framework("whitenoise", worker, e2e_root) as served:
        before = served.stats()
        head, body = served.fetch("/files/data.bin")
        assert head.startswith(b"HTTP/1.1 200 ") and body == DATA
        assert _moved(before, served.stats())["sendfile"] == (1, SIZE)


# -- naming the worker: whatever the combination, fastwrap is in or gunicorn stops ---------

SYNC = "fastwrap.gunicorn.SyncWorker"
THREAD = "fastwrap.gunicorn.ThreadWorker"
WORKER = "fastwrap.gunicorn.Worker"
LOG_LINE = re.compile(r"^\[[^]]*\] \[(\d+)\] \[[A-Z]+\] (.*)$")


def _boot_lines(log: str) -> Dict[str, List[str]]:
    """Per worker gunicorn booted (its pid): the lines fastwrap logged from it."""
    said: Dict[str, List[str]] = {}
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        pid, message = match.groups()
        if message.startswith("Booting worker with pid: "):
            said.setdefault(message.rsplit(" ", 1)[1], [])
        elif message.startswith("fastwrap: "):
            said.setdefault(pid, []).append(message)
    return said


def _boot_line(worker_class: str, threads: int = 1, engine: str = fastwrap.IMPLEMENTATION) -> str:
    line = (f"fastwrap: file responses leave through fastwrap ({engine} engine), "
            f"worker class {worker_class}")
    if worker_class == THREAD:
        line += f", {threads} thread{'s' if threads != 1 else ''}"
    return line


def _said_once_per_worker(server: Server, workers: int, line: str) -> None:
    def said() -> Dict[str, List[str]]:
        return _boot_lines(server.error_log.read_text())

    # The first worker up answers the readiness probe; the others may still be booting.
    _eventually(lambda: sum(map(len, said().values())), workers)
    assert list(said().values()) == [[line]] * workers


def test_each_worker_says_once_at_boot_that_fastwrap_is_in(server):
    expected = _boot_line(SYNC) if server.worker == "sync" else _boot_line(THREAD, 4)
    _said_once_per_worker(server, 1, expected)


# (worker on the command line, more arguments, gunicorn.conf.py, GUNICORN_CMD_ARGS,
#  the worker class that runs, its threads)
NAMINGS = {
    "cli-Worker": (WORKER, (), None, None, WORKER, 1),  # one thread: sync, as itself
    "cli-Worker-threads-4": (WORKER, ("--threads", "4"), None, None, THREAD, 4),
    "conf-Worker-by-name-threads-4": (None, (), f"worker_class = {WORKER!r}\nthreads = 4\n",
                                      None, THREAD, 4),
    "cli-ThreadWorker-threads-1": (THREAD, ("--threads", "1"), None, None, THREAD, 1),
    "conf-SyncWorker-by-name": (None, (), f"worker_class = {SYNC!r}\n", None, SYNC, 1),
    # gunicorn swaps a *name* ending in "SyncWorker" for its own gthread when
    # threads > 1 (see the next test); the class itself it leaves alone.
    "conf-SyncWorker-class-threads-4": (
        None, (), "from fastwrap.gunicorn import SyncWorker\n"
                  "worker_class = SyncWorker\nthreads = 4\n", None, THREAD, 4),
    "conf-ThreadWorker-threads-2-workers-2": (
        None, ("--workers", "2"), f"worker_class = {THREAD!r}\nthreads = 2\n", None, THREAD, 2),
    "GUNICORN_CMD_ARGS-ThreadWorker-threads-3": (
        None, (), None, f"--worker-class {THREAD} --threads 3", THREAD, 3),
}


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_fastwrap_carries_the_file_whatever_names_the_worker(tmp_path_factory, data_file,
                                                             naming):
    worker, extra, config, cmd_args, runs, threads = NAMINGS[naming]
    env = {} if cmd_args is None else {"GUNICORN_CMD_ARGS": cmd_args}
    if runs == THREAD and not GTHREAD_WORKS:
        # An older gunicorn: one line says why, and gunicorn stops before any worker.
        with pytest.raises(GunicornExited) as info:
            for _ in _server(tmp_path_factory, data_file, worker, env=env, extra=extra,
                             config=config):
                pass
        assert info.value.returncode != 0
        assert "Traceback" not in info.value.output
        errors = [line for line in info.value.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1
        assert f"needs gunicorn >= 27, found {gunicorn.__version__}: " in errors[0]
        return
    for served in _server(tmp_path_factory, data_file, worker, env=env, extra=extra,
                          config=config):
        # One connection: with gthread it stays with one worker, whose counters these are.
        conn = served.connection()
        try:
            before = served.stats(conn)
            conn.request("GET", "/file?skip=10")
            sock = conn.sock
            assert conn.getresponse().read() == DATA[10:]
            after = served.stats(conn)
            # gthread kept the connection; gunicorn's sync worker closes after each response.
            assert (conn.sock is sock) == (runs == THREAD)
        finally:
            conn.close()
        assert _moved(before, after)["sendfile"] == (1, SIZE - 10)
        _said_once_per_worker(served, 2 if "--workers" in extra else 1,
                              _boot_line(runs, threads))


def test_gunicorn_swaps_a_worker_named_sync_worker_for_its_gthread_before_importing_it(
        tmp_path_factory, data_file):
    # What the README warns of: gunicorn decides by the name alone, so fastwrap
    # is never imported and cannot object; only its missing boot line shows it.
    for served in _server(tmp_path_factory, data_file, SYNC, extra=("--threads", "4")):
        before = served.stats()
        head, body = served.fetch("/file?cl=1000")
        assert body == DATA[:1000]
        assert _moved(before, served.stats()) == {p: (0, 0) for p in fastwrap.PATHS}
        log = served.error_log.read_text()
        assert "Using worker: gthread" in log
        assert list(_boot_lines(log).values()) == [[]]  # one worker, and fastwrap silent
