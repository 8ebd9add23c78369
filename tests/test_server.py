"""fastwrap.server, the event-loop core of `fastwrap serve`: limits, cache, stopping.

The behaviour `fastwrap serve` always had is in test_serve.py and
test_static.py; this is what the core adds.  Servers run as `fastwrap serve`
processes (FASTWRAP_NO_EXTENSIONS=1 for the pure engine), or, where a test
needs the server's own counters (fastwrap.stats()) or a stand-in for a slow
disk, as a Server in a thread of the test process with the engine under test.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest

import fastwrap
import fastwrap.server
from _static_support import (ResponseReader, ServeProcess, engine_env, parse, request,
                             unique)
from _support import CTRL_C, HANG, LINUX, random_bytes

FOUR = random_bytes(4096, seed=31)
BIG = random_bytes(2 * (1 << 20) + 3, seed=32)
HUGE_SIZE = 256 << 20  # sparse: costs no disk, outlasts every socket buffer


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("core") / "www"
    path.mkdir()
    (path / "four.bin").write_bytes(FOUR)
    (path / "big.bin").write_bytes(BIG)
    (path / "hello.txt").write_bytes(b"hello\n")
    with open(path / "huge.bin", "wb") as f:
        f.truncate(HUGE_SIZE)
    yield path
    (path / "huge.bin").unlink()


def _connect(server: Any, timeout: float = 10) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def _ask(sock: socket.socket, reader: ResponseReader, method: str, target: str,
         headers: Tuple[Tuple[str, str], ...] = ()) -> Any:
    sock.sendall(request(method, target, headers, close=False))
    return reader.read(method)


def _ended(sock: socket.socket) -> bool:
    """Whether the server closed *sock* (EOF or reset) before its timeout."""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# -- connections that hold nothing ------------------------------------------------------------

def test_idle_and_trickling_connections_do_not_delay_another_client(engine, root):
    # The threaded server gave each connection a thread for up to 30 s: 16 idle
    # ones stalled the 17th client.  Here 100 idle and a trickler cost no thread.
    server = ServeProcess(engine, root, "--quiet")
    idle: List[socket.socket] = []
    try:
        for i in range(100):
            sock = _connect(server)
            if i % 2:  # half after a response, kept alive; half before any request
                sock.sendall(request("GET", "/hello.txt", close=False))
                assert ResponseReader(sock.makefile("rb")).read().body == b"hello\n"
            idle.append(sock)
        trickler = _connect(server)
        idle.append(trickler)
        trickler.sendall(b"GET /four.bin HTT")
        # Well inside the idle time (30 s): each is answered at once.
        for _ in range(3):
            response, body = server.get("/big.bin")
            assert (response.status, body) == (200, BIG)
            trickler.sendall(b"P")
    finally:
        for sock in idle:
            sock.close()
        server.stop()
    assert server.proc.returncode == 0


def test_a_trickling_head_is_answered_408_and_closed(engine, root):
    server = ServeProcess(engine, root, "--head-timeout", "1")
    try:
        mark = server.mark()
        tag = unique()
        with _connect(server) as sock:
            received = bytearray()
            sock.settimeout(0.2)
            sock.sendall(f"GET /four.bin?{tag} HTTP/1.1\r\n".encode())
            for byte in b"Host: 127.0.0.1\r\nUser-Agent: a trickle of bytes\r\n" * 10:
                try:
                    sock.sendall(bytes([byte]))
                    chunk = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                received += chunk
            else:
                pytest.fail("the server kept a trickling client past its head timeout")
        assert parse(bytes(received)).status == 408
        line = server.access_line(tag, start=mark)
        assert line["status"] == "408"
    finally:
        server.stop()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(engine, root):
    server = ServeProcess(engine, root, "--quiet", "--idle-timeout", "1")
    try:
        with _connect(server) as sock:
            reader = ResponseReader(sock.makefile("rb"))
            assert _ask(sock, reader, "GET", "/hello.txt").body == b"hello\n"
            sock.settimeout(10)
            assert _ended(sock)
        assert server.get("/hello.txt")[1] == b"hello\n"
    finally:
        server.stop()


def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(engine, root):
    server = ServeProcess(engine, root, "--send-timeout", "1")
    try:
        mark = server.mark()
        tag = unique()
        with _connect(server) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request("GET", f"/huge.bin?{tag}"))
            # Never read: the server's sends stop making progress.
            line = server.access_line(tag, start=mark, timeout=20)
        assert line["status"] == "200" and 0 < int(line["size"]) < HUGE_SIZE
        assert server.get("/four.bin")[1] == FOUR
    finally:
        server.stop()


# -- heads too large ------------------------------------------------------------------------

@pytest.mark.parametrize("raw, status", [
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /" + b"a" * 2000, 414),
    (b"GET /four.bin HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n", 431),
    (b"GET /four.bin HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 200, 431),
    (b"GET /four.bin HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 101 + b"\r\n", 431),
], ids=["long-line", "long-line-unfinished", "long-field", "head-unfinished", "many-fields"])
def test_a_head_over_max_head_is_refused(engine, root, raw, status):
    server = ServeProcess(engine, root, "--max-head", "1024")
    try:
        mark = server.mark()
        with _connect(server) as sock:
            sock.sendall(raw)
            response = ResponseReader(sock.makefile("rb")).read()
            assert response.status == status
            assert response.header("Connection") == "close"
            assert _ended(sock)
        # A head just under the limit is served.
        response, body = server.get("/four.bin", {"X-Pad": "p" * 800})
        assert (response.status, body) == (200, FOUR)
        assert not [line for line in server.since(mark) if "Traceback" in line]
    finally:
        server.stop()


# -- how many at once -----------------------------------------------------------------------

def test_beyond_max_connections_a_client_waits_and_is_served_once_one_leaves(engine, root):
    server = ServeProcess(engine, root, "--quiet", "--max-connections", "2")
    try:
        held = [_connect(server) for _ in range(2)]
        for sock in held:
            reader = ResponseReader(sock.makefile("rb"))
            assert _ask(sock, reader, "GET", "/hello.txt").body == b"hello\n"
        extra = _connect(server)  # the kernel's backlog takes it
        extra.sendall(request("GET", "/four.bin"))
        extra.settimeout(0.5)
        with pytest.raises(socket.timeout):
            extra.recv(1)  # not served while two are open
        gone = held.pop()
        gone.shutdown(socket.SHUT_RDWR)  # its makefile() reader would keep it open
        gone.close()
        extra.settimeout(10)
        response = ResponseReader(extra.makefile("rb")).read()
        assert (response.status, response.body) == (200, FOUR)
        extra.close()
        for sock in held:
            sock.close()
        assert server.get("/hello.txt")[1] == b"hello\n"
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_out_of_descriptors_the_server_waits_and_lives_on(engine, root):
    # A hard limit low enough that accept() meets EMFILE before --max-connections.
    code = (CTRL_C + "import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, "
            "(48, 48)); runpy.run_module('fastwrap', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(root), "--port", "0",
                             "--quiet"], env=engine_env(engine), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        serving = proc.stderr.readline()
        port = int(re.search(r":(\d+)/ ", serving).group(1))  # type: ignore[union-attr]
        many = []
        for _ in range(80):
            try:
                many.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            except OSError:
                break
        for sock in many[:60]:
            sock.close()
        for sock in many[60:]:
            sock.sendall(request("GET", "/four.bin"))
            sock.settimeout(10)
            assert ResponseReader(sock.makefile("rb")).read().body == FOUR
            sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request("GET", "/hello.txt"))
            assert ResponseReader(sock.makefile("rb")).read().body == b"hello\n"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=HANG)[1]
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "cannot accept a connection (Too many open files)" in out, out


# -- never a stale byte or header -----------------------------------------------------------

def _same_times(path: Path, like: os.stat_result) -> None:
    os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))


def test_a_changed_file_is_never_served_stale_on_one_connection(engine, root):
    server = ServeProcess(engine, root, "--quiet")
    path = root / "changing.bin"
    first = random_bytes(5000, seed=1)
    path.write_bytes(first)
    try:
        with _connect(server) as sock:
            reader = ResponseReader(sock.makefile("rb"))
            seen = []

            def get() -> Any:
                response = _ask(sock, reader, "GET", "/changing.bin")
                seen.append(response.header("ETag"))
                return response

            assert get().body == first
            assert get().body == first  # cached now
            st = path.stat()
            # Changed in place, same size and mtime put back: the ctime tells.
            in_place = random_bytes(5000, seed=2)
            with open(path, "r+b") as f:
                f.write(in_place)
            _same_times(path, st)
            assert get().body == in_place
            # Replaced by rename, same size and mtime: another inode.
            st = path.stat()
            renamed = random_bytes(5000, seed=3)
            (root / "changing.tmp").write_bytes(renamed)
            _same_times(root / "changing.tmp", st)
            os.rename(root / "changing.tmp", path)
            response = get()
            assert response.body == renamed
            # The old copy's validator gets the new file, not a 304.
            old = seen[-2]
            response = _ask(sock, reader, "GET", "/changing.bin", (("If-None-Match", old),))
            assert (response.status, response.body) == (200, renamed)
            # Grown and shrunk: the length follows.
            path.write_bytes(renamed[:100])
            response = get()
            assert (response.body, response.header("Content-Length")) == (renamed[:100], "100")
            path.unlink()
            assert get().status == 404
            assert len(set(seen[:-1])) == 4, seen
    finally:
        path.unlink(missing_ok=True)
        server.stop()


def test_a_cached_path_whose_link_moves_out_of_the_root_is_refused(engine, root, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret\n")
    inside = root / "target.txt"
    inside.write_bytes(b"inside\n")
    link = root / "link.txt"
    link.symlink_to(inside)
    server = ServeProcess(engine, root, "--quiet")
    try:
        with _connect(server) as sock:
            reader = ResponseReader(sock.makefile("rb"))
            for _ in range(2):
                assert _ask(sock, reader, "GET", "/link.txt").body == b"inside\n"
            link.unlink()
            link.symlink_to(outside)
            response = _ask(sock, reader, "GET", "/link.txt")
            assert response.status == 403 and b"secret" not in response.body
    finally:
        link.unlink(missing_ok=True)
        inside.unlink(missing_ok=True)
        server.stop()


# -- cheap answers without a body -------------------------------------------------------------

BODILESS = {
    "head": ("HEAD", "/big.bin", ()),
    "not-modified": ("GET", "/four.bin", (("If-None-Match", "*"),)),
    "missing": ("GET", "/missing", ()),
    "redirect": ("GET", "/sub", ()),
}


@pytest.mark.parametrize("method, target, headers", list(BODILESS.values()), ids=list(BODILESS))
def test_answers_without_a_file_body_leave_in_one_write(engine, root, method, target, headers):
    (root / "sub").mkdir(exist_ok=True)
    server = ServeProcess(engine, root, "--quiet")
    try:
        with _connect(server) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw = request(method, target, headers, close=False)
            # Each answer comes whole in one recv: written at once.  And, one
            # request after the other on one connection, far more than the 25 a
            # second that Nagle's algorithm meeting delayed ACKs allows.
            answered = 0
            ends = time.monotonic() + 1.0
            while time.monotonic() < ends:
                sock.sendall(raw)
                data = sock.recv(65536)
                response = parse(data, method)
                assert response.status in (200, 304, 404, 301)
                assert data.endswith(b"\r\n\r\n" if method == "HEAD" or response.status == 304
                                     else response.body)
                answered += 1
            assert answered > 100, f"{answered} answers in a second on one connection"
    finally:
        server.stop()


# -- inside the test process: the engine's counters, a slow disk ----------------------------

class InProcess:
    """A fastwrap.server.Server in a thread of this process, with *engine*'s Transmission."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self.sock.getsockname()[1]
        self.server = fastwrap.server.Server(
            fastwrap.server.Config(root=str(root), quiet=True, **config))
        self.thread = threading.Thread(target=self.server.run, args=(self.sock,))
        self.thread.start()

    def get(self, target: str, headers: Tuple[Tuple[str, str], ...] = ()) -> Any:
        with _connect(self) as sock:
            sock.sendall(request("GET", target, headers))
            return ResponseReader(sock.makefile("rb")).read()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(HANG)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture
def in_process(engine, root, monkeypatch) -> Iterator[InProcess]:
    monkeypatch.setattr(fastwrap, "Transmission", engine.Transmission)
    served = InProcess(root)
    yield served
    served.stop()


def test_each_answer_without_a_file_body_is_one_send_of_the_server(in_process, monkeypatch):
    # The server's own calls, counted: socket.socket.send is what it writes
    # generated answers with (file bodies leave by the engine, on the descriptor).
    (Path(in_process.server.config.root) / "sub").mkdir(exist_ok=True)
    calls: List[int] = []
    send = socket.socket.send

    def counted(self: socket.socket, data: Any, *args: Any) -> int:
        calls.append(len(data))
        return send(self, data, *args)

    monkeypatch.setattr(socket.socket, "send", counted)
    asks = [("HEAD", "/big.bin", ()), ("GET", "/four.bin", (("If-None-Match", "*"),)),
            ("GET", "/missing", ()), ("GET", "/sub", ()), ("GET", "/sub/", ()),
            ("POST", "/four.bin", ()), ("HEAD", "/big.bin", ())]  # the last one a cache hit
    with _connect(in_process) as sock:
        reader = ResponseReader(sock.makefile("rb"))
        statuses = [_ask(sock, reader, method, target, headers).status
                    for method, target, headers in asks]
    assert statuses == [200, 304, 404, 301, 200, 405, 200]
    assert len(calls) == len(asks), calls


@pytest.mark.skipif(not LINUX, reason="the sendfile path is Linux's")
def test_stats_show_every_file_body_left_by_the_engine(in_process):
    fastwrap.reset_stats()
    assert in_process.get("/four.bin").body == FOUR
    assert in_process.get("/four.bin").body == FOUR  # a cache hit goes the same way
    assert in_process.get("/big.bin", (("Range", "bytes=10-1009"),)).body == BIG[10:1010]
    assert in_process.get("/big.bin").body == BIG
    sent = fastwrap.stats()["sendfile"]
    assert sent["transmissions"] == 4
    assert sent["bytes"] == 2 * len(FOUR) + 1000 + len(BIG)


def test_a_file_waiting_for_the_disk_does_not_block_other_clients(engine, root, monkeypatch):
    fetching = threading.Event()
    release = threading.Event()

    class SlowDisk(engine.Transmission):  # type: ignore[misc, name-defined]
        """Its first window is "on the disk" until a fetch thread has waited for it."""

        fetched = False

        def send(self) -> int:
            if not self.fetched:
                raise BlockingIOError
            return int(super().send())

        @property
        def waiting(self) -> Any:
            if not self.fetched:
                return fastwrap.Wait(-1, "disk")
            return super().waiting

        def fetch(self) -> None:
            fetching.set()
            assert threading.current_thread() is not threading.main_thread()
            release.wait(HANG)
            self.fetched = True

    monkeypatch.setattr(fastwrap, "Transmission", SlowDisk)
    served = InProcess(root)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            cold = pool.submit(served.get, "/big.bin")
            assert fetching.wait(HANG)
            # While that read waits for the "disk", the loop serves others.
            monkeypatch.setattr(fastwrap, "Transmission", engine.Transmission)
            for _ in range(5):
                assert served.get("/four.bin").body == FOUR
            assert not cold.done()
            release.set()
            assert cold.result(HANG).body == BIG
    finally:
        release.set()
        served.stop()


# -- stopping -------------------------------------------------------------------------------

def _download(server: Any, target: str, started: threading.Event, pace: float) -> bytes:
    with _connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(request("GET", target))
        received = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(received)
            received += chunk
            started.set()
            time.sleep(pace)


def test_a_graceful_stop_lets_a_download_in_flight_complete(engine, root):
    server = ServeProcess(engine, root, "--quiet")
    try:
        started = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            download = pool.submit(_download, server, "/big.bin", started, 0.02)
            assert started.wait(HANG)
            with _connect(server) as idle:
                server.proc.send_signal(signal.SIGTERM)
                assert _ended(idle)  # idle connections close at once
            data = download.result(HANG)
        assert parse(data).body == BIG
        assert server.proc.wait(HANG) == 0
        assert server.lines[-1] == "Terminated: stopping."
    finally:
        server.stop()


def test_a_second_interrupt_stops_at_once(engine, root):
    server = ServeProcess(engine, root, "--quiet")
    try:
        started = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            download = pool.submit(_download, server, "/huge.bin", started, 0.05)
            assert started.wait(HANG)
            server.interrupt()
            time.sleep(0.3)
            assert server.proc.poll() is None  # still sending, within its grace
            server.interrupt()
            assert server.proc.wait(10) == 0
            assert len(download.result(HANG)) < HUGE_SIZE  # cut short, as asked
    finally:
        server.stop()


def test_stop_from_another_thread_returns_from_run(in_process):
    assert in_process.get("/hello.txt").body == b"hello\n"
    with _connect(in_process) as idle:
        idle.sendall(request("GET", "/hello.txt", close=False))
        assert idle.recv(65536).endswith(b"hello\n")
        in_process.server.stop()
        in_process.thread.join(10)
        assert not in_process.thread.is_alive()
