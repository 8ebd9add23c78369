"""fastwrap.gevent.WSGIHandler in a real gevent.pywsgi server (in a subprocess).

Every test runs against both engines: the compiled one and, with
FASTWRAP_NO_EXTENSIONS=1 in the server's environment, the pure-Python one.
Bodies are compared byte for byte, and the server's fastwrap.stats() shows
which path carried them.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

pytest.importorskip("gevent", reason="gevent is in the project's test extra")

from _children import HANG  # noqa: E402
from _serve_gevent import ServerURL, serve_gevent  # noqa: E402
from _support import needs_linux, random_bytes  # noqa: E402
from conftest import import_compiled_engine  # noqa: E402
from test_waiting import evict, resident_pages  # noqa: E402

CURL = shutil.which("curl") or "/usr/bin/curl"
needs_curl = pytest.mark.skipif(not Path(CURL).exists(), reason="curl not installed")

SMALL = random_bytes(1_200_003, seed=71)
BIG = random_bytes(24 * 1024 * 1024 + 5, seed=72)  # far beyond any socket buffers


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    made = tmp_path_factory.mktemp("gevent-root")
    (made / "small.bin").write_bytes(SMALL)
    (made / "big.bin").write_bytes(BIG)
    (made / "empty.bin").write_bytes(b"")
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="module", params=["cython", "python"])
def server(request, root) -> ServerURL:
    env = {"FASTWRAP_TEST_ROOT": str(root)}
    if request.param == "python":
        env["FASTWRAP_NO_EXTENSIONS"] = "1"
    elif import_compiled_engine() is None:
        pytest.skip("compiled engine not built")
    with serve_gevent("_gevent_apps:app", env=env) as url:
        url.implementation = request.param
        yield url


# -- clients -----------------------------------------------------------------------

def connect(url: ServerURL) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", url.port, timeout=HANG)


def fetch(conn: http.client.HTTPConnection, target: str, method: str = "GET",
          headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, bytes]:
    conn.request(method, target, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    return response.status, response.headers, body


def get(url: ServerURL, target: str, method: str = "GET",
        headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, bytes]:
    conn = connect(url)
    try:
        return fetch(conn, target, method, headers)
    finally:
        conn.close()


def raw_exchange(url: ServerURL, request: bytes) -> bytes:
    """Send *request* on a fresh connection; everything received until the server closes."""
    with socket.create_connection(("127.0.0.1", url.port), timeout=HANG) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def server_stats(url: ServerURL) -> Dict[str, Any]:
    status, _, body = get(url, "/__stats__")
    assert status == 200
    return json.loads(body)


def sendfile_delta(before: Dict[str, Any], after: Dict[str, Any]) -> Tuple[int, int]:
    b, a = before["stats"]["sendfile"], after["stats"]["sendfile"]
    return a["transmissions"] - b["transmissions"], a["bytes"] - b["bytes"]


def reused(conn: http.client.HTTPConnection, sock: socket.socket) -> bool:
    return conn.sock is sock and sock.fileno() >= 0


def access_entries(url: ServerURL) -> List[Tuple[str, str, str]]:
    """(request line, status, byte count) of each line of pywsgi's access log."""
    entries = []
    for line in url.access_lines():
        m = re.search(r'"([^"]*)" (\S+) (\S+) \S+$', line)
        assert m, line
        entries.append(m.groups())
    return entries


def wait_for_log(url: ServerURL, request_line: str) -> Tuple[str, str, str]:
    deadline = time.monotonic() + HANG  # the server logs right after the response
    while time.monotonic() < deadline:
        found = [e for e in access_entries(url) if e[0] == request_line]
        if found:
            return found[-1]
        time.sleep(0.01)
    raise AssertionError(f"no access log line for {request_line!r}")


# -- the engine and the path ----------------------------------------------------------

def test_server_runs_the_requested_engine(server):
    assert server_stats(server)["implementation"] == server.implementation


def test_file_wrapper_response_is_byte_exact_and_takes_sendfile(server):
    before = server_stats(server)
    status, headers, body = get(server, "/file?name=small.bin")
    after = server_stats(server)
    assert status == 200
    assert body == SMALL
    assert headers["Content-Length"] == str(len(SMALL))
    assert sendfile_delta(before, after) == (1, len(SMALL))


def test_environ_offers_fastwraps_file_wrapper(server):
    # The stock gevent server offers none at all (gevent #33).
    status, _, body = get(server, "/?which=1")
    assert status == 200
    assert body.decode() in ("fastwrap._fastwrap.FileWrapper", "fastwrap._purepy.FileWrapper")
    assert body.decode().endswith(
        "_purepy.FileWrapper" if server.implementation == "python" else "_fastwrap.FileWrapper")


def test_empty_file_is_delimited(server):
    # fastwrap.serving treats a size-0 regular file as of unknown size (a /proc file
    # says 0 too): then the end of the connection ends the body.
    status, headers, body = get(server, "/file?name=empty.bin&cl=none")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "0" or headers["Connection"] == "close"


# -- framing -----------------------------------------------------------------------

def test_file_partly_read_before_wrapping_starts_at_tell(server):
    status, headers, body = get(server, "/file?name=small.bin&skip=1001")
    assert status == 200 and body == SMALL[1001:]
    assert headers["Content-Length"] == str(len(SMALL) - 1001)


def test_partly_read_file_without_content_length_gets_it_from_tell(server):
    status, headers, body = get(server, "/file?name=small.bin&skip=77&cl=none")
    assert status == 200 and body == SMALL[77:]
    assert headers["Content-Length"] == str(len(SMALL) - 77)
    assert "Transfer-Encoding" not in headers


def test_content_length_smaller_than_file_sends_exactly_that_and_keeps_alive(server):
    conn = connect(server)
    try:
        status, headers, body = fetch(conn, "/file?name=small.bin&cl=5000")
        assert status == 200 and body == SMALL[:5000]
        sock = conn.sock
        # The rest of the file did not leak into the next response.
        status, _, body = fetch(conn, "/file?name=small.bin&skip=3")
        assert status == 200 and body == SMALL[3:]
        assert reused(conn, sock)
    finally:
        conn.close()


def test_a_content_length_that_is_no_number_is_replaced_not_doubled(server):
    raw = raw_exchange(server, b"GET /file?name=small.bin&cl=abc HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    assert lengths == [b"Content-Length: %d" % len(SMALL)]
    assert body == SMALL


def test_no_content_length_is_set_from_the_file_and_keeps_alive(server):
    conn = connect(server)
    try:
        status, headers, body = fetch(conn, "/file?name=small.bin&cl=none")
        assert status == 200 and body == SMALL
        assert headers["Content-Length"] == str(len(SMALL))
        assert "Transfer-Encoding" not in headers
        sock = conn.sock
        status, _, body = fetch(conn, "/file?name=small.bin&cl=10")
        assert (status, body) == (200, SMALL[:10])
        assert reused(conn, sock)
    finally:
        conn.close()


def test_head_has_the_length_and_no_body(server):
    raw = raw_exchange(server, b"HEAD /file?name=small.bin&cl=none HTTP/1.1\r\n"
                               b"Host: x\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"\r\nContent-Length: {len(SMALL)}".encode() in head
    assert rest == b""


def test_head_then_get_on_one_connection(server):
    conn = connect(server)
    try:
        status, headers, body = fetch(conn, "/file?name=small.bin", "HEAD")
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == str(len(SMALL))
        sock = conn.sock
        status, _, body = fetch(conn, "/file?name=small.bin")
        assert status == 200 and body == SMALL
        assert reused(conn, sock)
    finally:
        conn.close()


def test_304_has_no_body_and_keeps_alive(server):
    raw = raw_exchange(server, b"GET /file?name=small.bin&status=304 HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"GET /file?name=small.bin&cl=12 HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 304 ")
    assert b"Transfer-Encoding" not in first and b"Content-Length" not in first
    # What follows the 304's headers is the second response, nothing in between.
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.partition(b"\r\n\r\n")[2] == SMALL[:12]


def test_short_file_sends_what_it_has_and_closes(server):
    promised = len(SMALL) + 1000
    target = f"/file?name=small.bin&cl={promised}"
    # No "Connection: close" from the client: only the server can end this.
    raw = raw_exchange(server, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert f"\r\nContent-Length: {promised}".encode() in head
    assert body == SMALL  # the prefix it had, then the connection closed
    entry = wait_for_log(server, f"GET {target} HTTP/1.1")
    assert entry[1:] == ("200", str(len(raw)))  # the bytes really sent
    assert f"ended after {len(SMALL)} of {promised} promised bytes" in \
        server.error_log.read_text()


def test_unknown_length_is_delimited_by_closing(server):
    raw = raw_exchange(server, b"GET /file?name=small.bin&stream=1&cl=none HTTP/1.1\r\n"
                               b"Host: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length" not in head and b"Transfer-Encoding" not in head
    assert b"\r\nConnection: close" in head
    assert body == SMALL


def test_access_log_counts_the_bytes_really_sent(server):
    target = "/file?name=small.bin&skip=5&cl=70000"
    raw = raw_exchange(server, f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n".encode())
    assert raw.partition(b"\r\n\r\n")[2] == SMALL[5:70005]
    entry = wait_for_log(server, f"GET {target} HTTP/1.1")
    assert entry[1:] == ("200", str(len(raw)))  # headers and body, as pywsgi counts


def test_keep_alive_after_file_responses(server):
    conn = connect(server)
    try:
        status, _, body = fetch(conn, "/file?name=small.bin")
        assert status == 200 and body == SMALL
        sock = conn.sock
        for skip in (1, 2, 3):
            status, _, body = fetch(conn, f"/file?name=small.bin&skip={skip}")
            assert status == 200 and body == SMALL[skip:]
        status, _, body = fetch(conn, "/file?name=empty.bin")  # with Content-Length: 0
        assert (status, body) == (200, b"")
        assert reused(conn, sock)
    finally:
        conn.close()


# -- the iterated route keeps the same rules as the fast path ---------------------------

def test_iterated_response_is_byte_exact_and_not_counted_as_a_transmission(server):
    before = server_stats(server)
    status, headers, body = get(server, "/file?name=small.bin&skip=9&iterate=1")
    assert status == 200 and body == SMALL[9:]
    assert sendfile_delta(before, server_stats(server)) == (0, 0)


def test_iterated_head_has_no_body(server):
    # Stock pywsgi sends the body of a HEAD response; on keep-alive it would
    # be read as the next response.
    raw = raw_exchange(server, b"HEAD /file?name=small.bin&iterate=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"GET /file?name=small.bin&cl=7 HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert f"\r\nContent-Length: {len(SMALL)}".encode() in first
    assert rest.startswith(b"HTTP/1.1 200 ")  # nothing between the two responses
    assert rest.partition(b"\r\n\r\n")[2] == SMALL[:7]


def test_iterated_head_without_length_has_no_body(server):
    raw = raw_exchange(server, b"HEAD /file?name=small.bin&iterate=1&cl=none HTTP/1.1\r\n"
                               b"Host: x\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and rest == b""


def test_iterated_body_stops_at_content_length_and_keeps_alive(server):
    conn = connect(server)
    try:
        status, _, body = fetch(conn, "/file?name=small.bin&iterate=1&cl=100000")
        assert status == 200 and body == SMALL[:100000]
        sock = conn.sock
        status, _, body = fetch(conn, "/file?name=small.bin&iterate=1&skip=1")
        assert status == 200 and body == SMALL[1:]
        assert reused(conn, sock)
    finally:
        conn.close()


def test_iterated_short_body_closes_the_connection(server):
    promised = len(SMALL) + 5
    target = f"/file?name=small.bin&iterate=1&cl={promised}"
    raw = raw_exchange(server, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.partition(b"\r\n\r\n")[2] == SMALL  # then EOF, not a wait
    wait_for_log(server, f"GET {target} HTTP/1.1")
    assert f"ended after {len(SMALL)} of {promised} promised bytes" in \
        server.error_log.read_text()


# -- curl --------------------------------------------------------------------------

@needs_curl
def test_curl_downloads_byte_exact_on_one_connection(server, tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    done = subprocess.run(
        [CURL, "-sS", "--fail", "-w", "%{http_code} %{num_connects}\n",
         "-o", str(out1), f"{server}/file?name=small.bin",
         "-o", str(out2), f"{server}/file?name=big.bin&skip=4099"],
        capture_output=True, text=True, timeout=HANG, check=True)
    assert done.stdout.split("\n")[:2] == ["200 1", "200 0"]  # the second reused it
    assert out1.read_bytes() == SMALL
    assert out2.read_bytes() == BIG[4099:]


@needs_curl
def test_curl_head(server):
    done = subprocess.run([CURL, "-sS", "-I", f"{server}/file?name=small.bin&cl=none"],
                          capture_output=True, timeout=HANG, check=True)
    assert done.stdout.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(SMALL)}\r\n".encode() in done.stdout


@needs_curl
def test_curl_short_file_is_reported_as_cut_short(server, tmp_path):
    out = tmp_path / "short"
    done = subprocess.run(
        [CURL, "-sS", "-o", str(out), f"{server}/file?name=small.bin&cl={len(SMALL) + 9}"],
        capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 18  # CURLE_PARTIAL_FILE: it was not left waiting
    assert out.read_bytes() == SMALL


# -- one slow client never stalls the hub ----------------------------------------------

class SlowClient(threading.Thread):
    """Downloads big.bin through a tiny receive buffer, a little at a time.

    It reads at most *cap* bytes until *release* is set, so it is certainly
    still downloading when the fast clients finish, whatever the timing.
    """

    def __init__(self, url: ServerURL, release: threading.Event, cap: int) -> None:
        super().__init__(daemon=True)
        self.url, self.release, self.cap = url, release, cap
        self.started = threading.Event()
        self.received = bytearray()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(HANG)
            with sock:
                sock.connect(("127.0.0.1", self.url.port))
                sock.sendall(b"GET /file?name=big.bin HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
                while True:
                    if len(self.received) >= self.cap:
                        self.started.set()
                        if not self.release.wait(HANG):
                            raise TimeoutError("never released")
                    slow = not self.release.is_set()
                    chunk = sock.recv(1024 if slow else 1 << 20)
                    if not chunk:
                        break
                    self.received += chunk
                    self.started.set()
                    if slow:
                        time.sleep(0.001)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.started.set()


def test_slow_client_does_not_stall_fast_ones(server):
    before = server_stats(server)
    release = threading.Event()
    slow = SlowClient(server, release, cap=1024 * 1024)
    slow.start()
    try:
        assert slow.started.wait(HANG) and slow.error is None  # its transmission is under way
        results: Dict[int, Any] = {}

        def fast(i: int) -> None:
            try:
                results[i] = get(server, f"/file?name=small.bin&skip={i}")
            except BaseException as exc:
                results[i] = exc

        fasts = [threading.Thread(target=fast, args=(i,), daemon=True) for i in range(12)]
        for t in fasts:
            t.start()
        for t in fasts:
            t.join(HANG)
        # Every fast client is complete and byte-exact ...
        for i in range(12):
            assert not isinstance(results[i], BaseException), results[i]  # e.g. a stalled hub
            status, _, body = results[i]
            assert status == 200 and body == SMALL[i:], i
        # ... while the slow one is still in the middle of its file, on both ends.
        middle = server_stats(server)
        assert slow.is_alive() and len(slow.received) < len(BIG)
        assert sendfile_delta(before, middle) == (12, sum(len(SMALL) - i for i in range(12)))
    finally:
        release.set()
        slow.join(HANG)
    assert slow.error is None
    head, _, body = bytes(slow.received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == BIG
    after = server_stats(server)
    assert sendfile_delta(middle, after) == (1, len(BIG))


# -- the greenlet waits for what its transmission waits for --------------------------------

def server_steps(url: ServerURL, query: str = "") -> Dict[str, int]:
    """The server's transmission counts (see _gevent_apps.Steps); *query* drives its gate."""
    status, _, body = get(url, f"/__steps__?{query}")
    assert status == 200
    return json.loads(body)


@pytest.mark.skipif(sys.platform == "win32", reason="gevent on Windows polls sockets only")
def test_empty_pipe_parks_the_greenlet_until_it_has_data(server):
    # A non-blocking pipe that has nothing for half a second: waiting for the
    # socket to be writable instead would run a step per loop turn meanwhile.
    before = server_steps(server)
    status, headers, body = get(server, "/pipe?name=small.bin&size=60000&after=0.5")
    assert status == 200 and body == SMALL[:60000]
    sends = server_steps(server)["sends"] - before["sends"]
    assert 1 <= sends <= 6, f"{sends} steps for one pipe that was empty half a second"


class Download(threading.Thread):
    """GET *target* on a raw connection, keeping everything received until EOF."""

    def __init__(self, url: ServerURL, target: str) -> None:
        super().__init__(daemon=True)
        self.url, self.target = url, target
        self.received = b""
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.received = raw_exchange(self.url, f"GET {self.target} HTTP/1.1\r\n"
                                                   "Host: x\r\nConnection: close\r\n\r\n".encode())
        except BaseException as exc:  # reported by the test
            self.error = exc


COLD = BIG[:3 * 1024 * 1024 + 5]  # two windows of fetch()


@pytest.fixture
def cold(root, request) -> str:
    """The name, under the server's root, of a file none of which is in the page cache."""
    name = f"cold-{request.node.name}.bin".replace("[", "-").replace("]", "")
    path = root / name
    path.write_bytes(COLD)
    evict(str(path))
    if resident_pages(str(path)):
        pytest.skip("this filesystem keeps evicted pages resident (no POSIX_FADV_DONTNEED)")
    yield name
    path.unlink()


@contextlib.contextmanager
def first_fetch_held(url: ServerURL, target: str) -> Iterator[Tuple[Dict[str, int], Download]]:
    """Download *target* while its first fetch() is held at the server's gate.

    Yields the server's counts from before, and the download under way.  The
    counts are asked for until they show the fetch held: each answer comes
    from another greenlet of the same hub, so the last one shows the hub
    serving while a fetch reads the disk.
    """
    before = server_steps(url, "gate=arm")
    download = Download(url, target)
    download.start()
    deadline = time.monotonic() + HANG  # a guard against hanging, never an assertion
    try:
        while not server_steps(url)["at_gate"]:
            assert download.is_alive(), "the download ended without a fetch"
            assert time.monotonic() < deadline, "no fetch was held at the gate"
            time.sleep(0.01)
        yield before, download
    finally:
        server_steps(url, "gate=open")
        download.join(HANG)
    assert download.error is None


@needs_linux
def test_cold_file_is_fetched_off_the_hub_while_it_serves_others(server, cold):
    with first_fetch_held(server, f"/file?name={cold}") as (before, download):
        pass
    head, _, body = download.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == COLD
    after = server_steps(server)
    fetches = after["fetches"] - before["fetches"]
    assert fetches >= 1
    assert after["fetches_off_hub"] - before["fetches_off_hub"] == fetches
    assert after["fetch_errors"] == before["fetch_errors"]


@needs_linux
def test_greenlet_killed_mid_fetch_keeps_the_file_open_until_the_fetch_returns(server, cold):
    with first_fetch_held(server, f"/file?name={cold}") as (before, download):
        server_steps(server, "kill=1")  # as a server stopping with a timeout does
    assert len(download.received) < len(COLD)
    deadline = time.monotonic() + HANG
    while server_steps(server)["closes"] == before["closes"] and time.monotonic() < deadline:
        time.sleep(0.01)
    after = server_steps(server)
    assert after["closes"] == before["closes"] + 1
    # Closed after its fetch returned, which read an open file.
    assert after["closed_mid_fetch"] == before["closed_mid_fetch"]
    assert after["fetch_errors"] == before["fetch_errors"]


# -- frameworks ------------------------------------------------------------------------

def test_flask_send_file_200_head_304_and_range(server):
    pytest.importorskip("flask", reason="flask is in the project's test extra")
    before = server_stats(server)
    conn = connect(server)
    try:
        status, headers, body = fetch(conn, "/flask/small.bin")
        assert status == 200 and body == SMALL
        etag = headers["ETag"]
        sock = conn.sock
        status, headers, body = fetch(conn, "/flask/small.bin", "HEAD")
        assert (status, body) == (200, b"") and headers["Content-Length"] == str(len(SMALL))
        status, _, body = fetch(conn, "/flask/small.bin", headers={"If-None-Match": etag})
        assert (status, body) == (304, b"")
        status, headers, body = fetch(conn, "/flask/small.bin",
                                      headers={"Range": "bytes=1000-599999"})
        assert status == 206 and body == SMALL[1000:600000]
        assert headers["Content-Range"] == f"bytes 1000-599999/{len(SMALL)}"
        assert reused(conn, sock)
    finally:
        conn.close()
    # The 200 and the 206 (werkzeug's range wrapper) both went through sendfile.
    assert sendfile_delta(before, server_stats(server)) == (2, len(SMALL) + 599000)


def test_whitenoise_is_byte_exact_through_sendfile(server):
    pytest.importorskip("whitenoise", reason="whitenoise is in the project's test extra")
    before = server_stats(server)
    status, headers, body = get(server, "/static/small.bin")
    assert status == 200 and body == SMALL
    assert sendfile_delta(before, server_stats(server)) == (1, len(SMALL))


def django_finished(server: ServerURL) -> int:
    # This request's own signal fires after its body is sent: not counted in it.
    status, _, body = get(server, "/django/finished")
    assert status == 200
    return int(body)


def test_django_file_response_fires_request_finished_once(server):
    pytest.importorskip("django", reason="django is in the project's test extra")
    start = django_finished(server)  # 'start' includes earlier probes
    before = server_stats(server)
    status, headers, body = get(server, "/django/small.bin")
    assert status == 200 and body == SMALL
    assert headers["Content-Length"] == str(len(SMALL))
    assert sendfile_delta(before, server_stats(server)) == (1, len(SMALL))
    # +1 for the first probe's own request, +1 for the file: each exactly once.
    assert django_finished(server) == start + 2


def test_django_request_finished_fires_once_when_client_disconnects(server):
    pytest.importorskip("django", reason="django is in the project's test extra")
    start = django_finished(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG) as sock:
        # Linger 0: close() resets the connection, as a client gone away does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /django/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536)  # the file is under way; then the client goes
    entry = wait_for_log(server, "GET /django/big.bin HTTP/1.1")
    assert int(entry[2]) < len(BIG)  # cut off, and logged as such
    # +1 for the first probe, +1 for the abandoned file: never twice.
    assert django_finished(server) == start + 2
    assert django_finished(server) == start + 3


# -- TLS: the kernel must never write to a TLS socket ----------------------------------------

def test_https_is_byte_exact_and_never_takes_sendfile(request, root, tmp_path):
    trustme = pytest.importorskip("trustme", reason="trustme is in the project's test extra")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    # fastwrap.gevent.WSGIServer, the one-line form, which must bring the handler.
    with serve_gevent("_gevent_apps:app", env={"FASTWRAP_TEST_ROOT": str(root)},
                      tls=(str(certfile), str(keyfile)), form="preset") as url:
        def https() -> http.client.HTTPSConnection:
            return http.client.HTTPSConnection("127.0.0.1", url.port, timeout=HANG,
                                               context=client_ctx)

        conn = https()
        try:
            before = json.loads(fetch(conn, "/__stats__")[2])
            status, headers, body = fetch(conn, "/file?name=big.bin&skip=3&cl=none")
            assert status == 200 and body == BIG[3:]
            assert headers["Content-Length"] == str(len(BIG) - 3)
            sock = conn.sock
            status, _, body = fetch(conn, "/file?name=small.bin&cl=1000")
            assert (status, body) == (200, SMALL[:1000])
            assert reused(conn, sock)
            after = json.loads(fetch(conn, "/__stats__")[2])
        finally:
            conn.close()
    assert sendfile_delta(before, after) == (0, 0)
    moved = sum(after["stats"][p]["bytes"] - before["stats"][p]["bytes"]
                for p in after["stats"])
    assert moved == len(BIG) - 3 + 1000  # through fastwrap, on a user-space path
