"""End to end: real frameworks behind real servers, real clients on 127.0.0.1.

Each application of ``e2e_apps`` (plain ``wsgi.file_wrapper``, the same inside
``wsgiref.validate.validator``, Flask ``send_file``, Django ``FileResponse``,
WhiteNoise) is served by each launcher (the stdlib server with
``fastwrap.wsgiref.install()``, ``fastwrap.wsgiref.make_server``, gunicorn with
fastwrap's sync and gthread workers, gevent with fastwrap's handler) and asked
for files by ``http.client``, by ``/usr/bin/curl`` and, where the absence of a
body must be seen on the wire, by a raw socket.  Bodies are compared byte for
byte with the file (or the range's slice), and the serving process's
``fastwrap.stats()`` shows which path carried them.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pytest

import e2e_apps
from _servers import get_stats
from _support import HANG, random_bytes, recv_until_eof
from e2e_launchers import (EXPECTED, KEEP_ALIVE, LAUNCHERS, UNAVAILABLE, UNSUPPORTED,
                            serving_root)

CURL = "/usr/bin/curl"


@pytest.mark.parametrize("name", EXPECTED)
def test_launcher_is_available(name: str) -> None:
    if name in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[name])
    assert name not in UNAVAILABLE, UNAVAILABLE.get(name)
    assert name in LAUNCHERS


# -- files ----------------------------------------------------------------------------------

BIG = "big.bin"          # several socket buffers' worth, odd size
SMALL = "small.bin"
HUGE = "huge.bin"        # big enough that the server is mid-file when a client goes away
BIG_SIZE = 3 * 1024 * 1024 + 12345
SMALL_SIZE = 1000
HUGE_SIZE = 96 * 1024 * 1024


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, bytes]]:
    """The served directory, named in FASTWRAP_E2E_ROOT for in-process and child servers."""
    directory = tmp_path_factory.mktemp("e2e-root")
    contents = {BIG: random_bytes(BIG_SIZE, seed=1), SMALL: random_bytes(SMALL_SIZE, seed=2)}
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    with open(directory / HUGE, "wb") as f:  # a random head, then a sparse tail
        f.write(random_bytes(1024 * 1024, seed=3))
        f.truncate(HUGE_SIZE)
    with serving_root(directory):
        yield contents


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def launcher(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=sorted(e2e_apps.APPS))
def app_name(request: pytest.FixtureRequest) -> str:
    """Every application, unless a test narrows it down with :func:`for_apps`."""
    return request.param


@pytest.fixture(scope="module")
def server(files: Dict[str, bytes], launcher: str, app_name: str) -> Iterator["Server"]:
    with LAUNCHERS[launcher]({**e2e_apps.APPS, **e2e_apps.ITERATED_APPS}[app_name]) as url:
        yield Server(str(url), launcher, app_name)


def for_apps(*names: str) -> Any:
    """Run a test only against the servers of the applications *names*."""
    return pytest.mark.parametrize("app_name", names, indirect=True, scope="module")


class Server:
    def __init__(self, url: str, launcher: str, app: str) -> None:
        self.url = url
        self.launcher = launcher
        self.app = app
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.host, self.port = host, int(port)
        assert self.host == "127.0.0.1"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=HANG)

    def stats(self) -> Dict[str, Dict[str, int]]:
        return get_stats(self.url)

    @property
    def iterates(self) -> bool:
        """A wrapper hides the file behind its own iterator: no file response to send."""
        return self.app in e2e_apps.ITERATED_APPS


# -- clients --------------------------------------------------------------------------------

class Reply:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


def via_http_client(server: Server, method: str, path: str,
                    headers: Optional[Dict[str, str]] = None) -> Reply:
    conn = server.connection()
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, dict(response.getheaders()), body)
    finally:
        conn.close()


def via_curl(server: Server, method: str, path: str,
             headers: Optional[Dict[str, str]] = None) -> Reply:
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    tag = hashlib.sha1(os.urandom(8)).hexdigest()
    head_file, body_file = scratch / f"fw-curl-{tag}.h", scratch / f"fw-curl-{tag}.b"
    args = [CURL, "--silent", "--show-error", "--http1.1", "--noproxy", "*",
            "--max-time", str(int(HANG)), "--dump-header", str(head_file),
            "--output", str(body_file), "--write-out", "%{http_code}"]
    if method == "HEAD":
        args.append("--head")
    elif method != "GET":
        args += ["--request", method]
    for name, value in (headers or {}).items():
        args += ["--header", f"{name}: {value}"]
    args.append(server.url + path)
    before = server.stats()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=HANG + 10)
        assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
        raw_headers = head_file.read_bytes().decode("iso-8859-1").splitlines()
        body = body_file.read_bytes() if body_file.exists() else b""
        if method == "HEAD":  # --head writes the header block to --output too
            header_block = head_file.read_bytes()
            assert body.startswith(header_block)
            body = body[len(header_block):]
    finally:
        head_file.unlink(missing_ok=True)
        body_file.unlink(missing_ok=True)
    parsed = dict(line.split(":", 1) for line in raw_headers[1:] if ":" in line)
    return Reply(int(done.stdout), {k.strip(): v.strip() for k, v in parsed.items()}, body)


CLIENTS = {"http.client": via_http_client, "curl": via_curl}


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> Callable[..., Reply]:
    return CLIENTS[request.param]


def raw_exchange(server: Server, request_head: str) -> Tuple[bytes, bytes]:
    """Send *request_head* (with ``Connection: close``); everything the server sent, split
    into its header block and whatever followed it until the server closed."""
    with socket.create_connection((server.host, server.port), timeout=HANG) as sock:
        sock.sendall(request_head.encode("latin-1"))
        received = bytearray(recv_until_eof(sock))
    head, sep, rest = bytes(received).partition(b"\r\n\r\n")
    assert sep, f"no complete header block in {bytes(received[:200])!r}"
    return head, rest


def raw_request(method: str, path: str, extra: Optional[Dict[str, str]] = None) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def status_of(head: bytes) -> int:
    return int(head.split(b"\r\n", 1)[0].split()[1])


def header_of(head: bytes, name: str) -> Optional[str]:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# -- what the server's fastwrap did ---------------------------------------------------------

def _transmissions(stats: Dict[str, Dict[str, int]], path: Optional[str]) -> int:
    if path is not None:
        return stats[path]["transmissions"]
    return sum(entry["transmissions"] for entry in stats.values())


def stats_after(server: Server, before: Dict[str, Dict[str, int]], transmissions: int,
                path: Optional[str] = None) -> Dict[str, Dict[str, int]]:
    """The change in the server's stats once *transmissions* more have been recorded
    (on *path*, or on any path).

    A server records a transmission after its last byte left, so a client may
    have the whole body before the count moves: wait for it (a guard against
    a hang, not a timing assertion), then report the difference.
    """
    deadline = time.monotonic() + HANG / 4
    while True:
        after = server.stats()
        done = _transmissions(after, path) - _transmissions(before, path)
        if done >= transmissions:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{server.launcher}/{server.app}: fastwrap recorded {done} of "
                        f"{transmissions} expected transmissions on {path or 'any path'}; "
                        f"stats now {after}")
        time.sleep(0.02)
    return {path: {key: after[path][key] - before[path][key] for key in after[path]}
            for path in after}


def assert_fast_path_sent(server: Server, before: Dict[str, Dict[str, int]],
                          nbytes: int) -> None:
    """The body left by sendfile (loopback, plain HTTP), all *nbytes* of it, in one go."""
    if server.iterates:
        # A wrapper hides the file behind its own iterator, which the server must
        # iterate (correctly: the caller checked the bytes), not send as a file.
        assert server.stats()["sendfile"] == before["sendfile"]
        return
    delta = stats_after(server, before, 1, "sendfile")
    assert delta["sendfile"]["bytes"] == nbytes, delta
    assert delta["sendfile"]["transmissions"] == 1, delta
    others = {path: entry["bytes"] for path, entry in delta.items() if path != "sendfile"}
    assert not any(others.values()), delta


# -- 200 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [BIG, SMALL])
def test_get_sends_the_file_byte_exact_through_sendfile(server: Server, files, client,
                                                        name: str) -> None:
    before = server.stats()
    reply = client(server, "GET", e2e_apps.PREFIX + name)
    assert reply.status == 200
    assert reply.header("Content-Length") == str(len(files[name]))
    assert reply.body == files[name]
    assert_fast_path_sent(server, before, len(files[name]))


# -- HEAD -----------------------------------------------------------------------------------

FILE_APPS = ("django", "flask", "plain", "validated", "whitenoise")


@for_apps(*FILE_APPS)
def test_head_has_headers_and_no_body(server: Server, files, client) -> None:
    before = server.stats()
    reply = client(server, "HEAD", e2e_apps.PREFIX + BIG)
    assert reply.status == 200
    assert reply.header("Content-Length") == str(BIG_SIZE)
    assert reply.body == b""
    # On the wire: nothing at all after the header block, until the server closes.
    head, rest = raw_exchange(server, raw_request("HEAD", e2e_apps.PREFIX + BIG))
    assert status_of(head) == 200
    assert header_of(head, "Content-Length") == str(BIG_SIZE)
    assert rest == b""
    assert server.stats()["sendfile"]["bytes"] == before["sendfile"]["bytes"]


@for_apps("iterated")
def test_head_of_an_iterated_file_response_has_no_body(server: Server, files) -> None:
    """A wrapper hides the file wrapper, so the server falls back to iterating it;
    the fallback keeps the rules of the fast path: no body for HEAD.  On a keep-alive
    connection a HEAD body would be read as the next response."""
    head, rest = raw_exchange(server, raw_request("HEAD", e2e_apps.PREFIX + BIG))
    assert status_of(head) == 200
    assert header_of(head, "Content-Length") == str(BIG_SIZE)
    assert len(rest) == 0, f"{len(rest)} body bytes after the headers of a HEAD response"
    if server.launcher in KEEP_ALIVE:
        conn = server.connection()
        try:
            conn.request("HEAD", e2e_apps.PREFIX + BIG)
            assert conn.getresponse().read() == b""
            conn.request("GET", e2e_apps.PREFIX + SMALL)
            assert conn.getresponse().read() == files[SMALL]
        finally:
            conn.close()


# -- conditional requests: 304 --------------------------------------------------------------

@for_apps("flask", "whitenoise")
def test_not_modified_has_no_body(server: Server, files, client) -> None:
    before = server.stats()
    first = client(server, "GET", e2e_apps.PREFIX + BIG)
    assert first.body == files[BIG]
    stats_after(server, before, 1)  # recorded, so it cannot land in the counts below
    etag, modified = first.header("ETag"), first.header("Last-Modified")
    assert etag and modified
    for condition in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
        before = server.stats()
        reply = client(server, "GET", e2e_apps.PREFIX + BIG, condition)
        assert reply.status == 304, condition
        assert reply.body == b""
        head, rest = raw_exchange(server, raw_request("GET", e2e_apps.PREFIX + BIG, condition))
        assert status_of(head) == 304
        assert rest == b""
        assert server.stats()["sendfile"]["bytes"] == before["sendfile"]["bytes"]


# -- ranges: 206 ----------------------------------------------------------------------------

RANGE_START, RANGE_END = 100_003, 2_300_002  # inclusive, as in the header


@for_apps("flask", "whitenoise")
def test_range_is_sent_as_206_with_exactly_the_slice(server: Server, files, client) -> None:
    before = server.stats()
    reply = client(server, "GET", e2e_apps.PREFIX + BIG,
                   {"Range": f"bytes={RANGE_START}-{RANGE_END}"})
    expected = files[BIG][RANGE_START:RANGE_END + 1]
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {RANGE_START}-{RANGE_END}/{BIG_SIZE}"
    assert reply.header("Content-Length") == str(len(expected))
    assert reply.body == expected
    delta = stats_after(server, before, 1, "sendfile" if server.app == "flask" else None)
    if server.app == "flask":
        # werkzeug's _RangeWrapper around the server's file wrapper: fastwrap seeks to
        # the range and sendfile sends exactly its length, no more, no less.
        assert delta["sendfile"]["bytes"] == len(expected), delta
        assert delta["sendfile"]["transmissions"] == 1, delta
    else:
        # WhiteNoise slices the file itself (a file-like without a descriptor): it still
        # leaves through fastwrap, by reading, exactly the range.
        assert sum(entry["bytes"] for entry in delta.values()) == len(expected), delta


@for_apps("flask", "whitenoise")
def test_suffix_range_and_open_ended_range(server: Server, files) -> None:
    data = files[BIG]
    for spec, start in ((f"bytes=-{SMALL_SIZE}", BIG_SIZE - SMALL_SIZE),
                        (f"bytes={BIG_SIZE - 777}-", BIG_SIZE - 777)):
        before = server.stats()
        reply = via_http_client(server, "GET", e2e_apps.PREFIX + BIG, {"Range": spec})
        assert reply.status == 206, spec
        assert reply.header("Content-Range") == f"bytes {start}-{BIG_SIZE - 1}/{BIG_SIZE}"
        assert reply.body == data[start:]
        # Wait for the server to record it too: exactly the range left, and no transmission
        # of this test is left to land in the next test's counts.
        delta = stats_after(server, before, 1)
        assert sum(entry["bytes"] for entry in delta.values()) == BIG_SIZE - start, delta


# -- keep-alive -----------------------------------------------------------------------------

def test_keep_alive_after_a_file_response(server: Server, files) -> None:
    """Requests after a file response on the same http.client connection get exactly their
    own bytes: the file response's framing was right."""
    conn = server.connection()
    try:
        before = server.stats()
        conn.request("GET", e2e_apps.PREFIX + BIG)
        first = conn.getresponse()
        assert first.status == 200
        assert first.read() == files[BIG]
        sock = conn.sock
        if server.launcher in KEEP_ALIVE:
            assert not first.will_close, first.getheaders()
            assert sock is not None
        conn.request("GET", e2e_apps.PREFIX + SMALL)
        second = conn.getresponse()
        assert second.status == 200
        assert second.read() == files[SMALL]
        if not server.iterates:  # (an iterated HEAD has a test of its own, below)
            conn.request("HEAD", e2e_apps.PREFIX + BIG)
            third = conn.getresponse()
            assert third.status == 200
            assert third.read() == b""
        conn.request("GET", e2e_apps.PREFIX + SMALL)
        fourth = conn.getresponse()
        assert fourth.read() == files[SMALL]
        if server.launcher in KEEP_ALIVE:
            assert conn.sock is sock, "the server closed a keep-alive connection"
    finally:
        conn.close()
    if not server.iterates:
        delta = stats_after(server, before, 3, "sendfile")  # the HEAD may count, with 0 bytes
        assert delta["sendfile"]["bytes"] == BIG_SIZE + 2 * SMALL_SIZE, delta


@pytest.mark.parametrize("launcher", sorted(KEEP_ALIVE & set(LAUNCHERS)), indirect=True,
                         scope="module")
def test_curl_reuses_the_connection_for_two_files(server: Server, files) -> None:
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    tag = hashlib.sha1(os.urandom(8)).hexdigest()
    outputs = [scratch / f"fw-curl-{tag}-{i}" for i in range(2)]
    args = [CURL, "--silent", "--show-error", "--http1.1", "--noproxy", "*",
            "--max-time", str(int(HANG)), "--write-out", "%{num_connects}\n"]
    for path, output in zip((BIG, SMALL), outputs):
        args += ["--output", str(output), server.url + e2e_apps.PREFIX + path]
    before = server.stats()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=HANG + 10)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", "0"], "curl had to reconnect for the second file"
        assert outputs[0].read_bytes() == files[BIG]
        assert outputs[1].read_bytes() == files[SMALL]
        if not server.iterates:  # recorded, so they cannot land in the next test's counts
            stats_after(server, before, 2)
    finally:
        for output in outputs:
            output.unlink(missing_ok=True)


# -- the plain app: the server's own rules --------------------------------------------------

@for_apps("plain")
def test_content_length_is_set_from_the_file_when_the_app_gives_none(server: Server,
                                                                      files) -> None:
    conn = server.connection()
    try:
        before = server.stats()
        conn.request("GET", e2e_apps.PREFIX + BIG + "?nocl=1")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == str(BIG_SIZE)
        assert response.getheader("Transfer-Encoding") is None
        assert response.read() == files[BIG]
        if server.launcher in KEEP_ALIVE:
            assert not response.will_close
        conn.request("GET", e2e_apps.PREFIX + SMALL)
        assert conn.getresponse().read() == files[SMALL]
    finally:
        conn.close()
    delta = stats_after(server, before, 2, "sendfile")
    assert delta["sendfile"]["bytes"] == BIG_SIZE + SMALL_SIZE, delta


@for_apps("plain")
def test_body_starts_at_the_files_position(server: Server, files) -> None:
    offset = 654_321
    for query in (f"?offset={offset}", f"?offset={offset}&nocl=1"):
        before = server.stats()
        reply = via_http_client(server, "GET", e2e_apps.PREFIX + BIG + query)
        assert reply.status == 200
        assert reply.header("Content-Length") == str(BIG_SIZE - offset), query
        assert reply.body == files[BIG][offset:], query
        assert_fast_path_sent(server, before, BIG_SIZE - offset)


# -- Django's request_finished --------------------------------------------------------------

def _django_finished(server: Server) -> int:
    return int(via_http_client(server, "GET", e2e_apps.DJANGO_FINISHED_PATH).body)


def _wait_finished(server: Server, expected: int) -> int:
    deadline = time.monotonic() + HANG / 4
    while True:
        count = _django_finished(server)
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


@for_apps("django")
def test_django_request_finished_fires_once_per_request(server: Server, files) -> None:
    start = _django_finished(server)
    reply = via_http_client(server, "GET", e2e_apps.PREFIX + BIG)
    assert reply.body == files[BIG]
    assert _wait_finished(server, start + 1) == start + 1
    reply = via_curl(server, "HEAD", e2e_apps.PREFIX + BIG)
    assert reply.status == 200 and reply.body == b""
    assert _wait_finished(server, start + 2) == start + 2
    reply = via_curl(server, "GET", e2e_apps.PREFIX + SMALL)
    assert reply.body == files[SMALL]
    # Each request counted once; a second close of any of them would show here.
    assert _wait_finished(server, start + 3) == start + 3
    assert _django_finished(server) == start + 3


@for_apps("django")
def test_django_request_finished_fires_once_when_the_client_goes_away(server: Server,
                                                                      files) -> None:
    start = _django_finished(server)
    with socket.create_connection((server.host, server.port), timeout=HANG) as sock:
        sock.sendall(raw_request("GET", e2e_apps.PREFIX + HUGE).encode())
        received = bytearray()
        while b"\r\n\r\n" not in received or len(received) < 256 * 1024:
            chunk = sock.recv(65536)
            assert chunk, "the server closed before sending much of the file"
            received += chunk
        head = bytes(received).partition(b"\r\n\r\n")[0]
        assert status_of(head) == 200
        assert header_of(head, "Content-Length") == str(HUGE_SIZE)
        # Reset, not a polite close: the server's next send fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert _wait_finished(server, start + 1) == start + 1
    # The server goes on serving, and counts the next request once too.
    reply = via_http_client(server, "GET", e2e_apps.PREFIX + SMALL)
    assert reply.body == files[SMALL]
    assert _wait_finished(server, start + 2) == start + 2
    assert _django_finished(server) == start + 2
