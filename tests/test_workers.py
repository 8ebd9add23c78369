"""Several workers on one port: spreading, replacement, graceful stop, the access log.

Each test starts its own server process on 127.0.0.1 (port 0) with the
engine under test and stops it by its pid.  The server is ``fastwrap serve
--workers N`` or, where marked ``stand-in``, the real supervisor with simple
workers (tests/_serve_workers.py), which checks the supervisor alone.  Which
worker answered a connection is read from the kernel: the worker holding the
server side of the connection (/proc, so Linux only).
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Set

import pytest

from _static_support import ACCESS, ResponseReader, ServeProcess, request, unique
from _support import HANG, LINUX, random_bytes

pytestmark = pytest.mark.skipif(not LINUX, reason="reads the workers from /proc (Linux)")

SMALL = b"small and whole\n"
BIG = random_bytes(24 << 20, seed=31)  # outlasts the socket buffers many times over
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workers")
    (path / "small.txt").write_bytes(SMALL)
    (path / "big.bin").write_bytes(BIG)
    return path


@pytest.fixture(params=["fastwrap-serve", "stand-in"])
def launcher(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Workers:
    """A server with several workers, and what the kernel says about them."""

    def __init__(self, engine: Any, root: Path, launcher: str, workers: int = 2,
                 grace: float = 10.0, quiet: bool = False, new_session: bool = False) -> None:
        if launcher == "stand-in":
            command: Optional[List[str]] = [sys.executable, str(HERE / "_serve_workers.py"),
                                            str(root), str(workers), str(grace)]
            options: List[str] = []
        else:
            command = None
            options = ["--workers", str(workers), "--grace", str(grace)]
            if quiet:
                options.append("--quiet")
        self.count = workers
        self.server = ServeProcess(engine, root, *options, command=command,
                                   new_session=new_session)
        self.pid = self.server.proc.pid
        self.port = self.server.port
        assert self.server.match["workers"] == str(workers), self.server.serving

    def children(self) -> Set[int]:
        """The pids of the live (not zombie) processes whose parent is the server."""
        return {pid for pid, ppid, state in _processes() if ppid == self.pid and state != "Z"}

    def wait_for_workers(self, exclude: Set[int] = frozenset()) -> Set[int]:
        """The workers, once there are as many as asked for, none of them in *exclude*."""
        deadline = time.monotonic() + HANG
        while True:
            pids = self.children()
            if len(pids) == self.count and not pids & exclude:
                return pids
            assert time.monotonic() < deadline, f"workers: {pids}, excluded: {exclude}"
            time.sleep(0.02)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=HANG)

    def answering_pid(self, sock: socket.socket) -> int:
        """The worker holding the server side of the connection *sock*."""
        inode = _server_inode(self.port, sock.getsockname()[1])
        for pid in self.children():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        raise AssertionError(f"no worker of {self.pid} holds the connection")

    def get_small(self) -> int:
        """GET /small.txt on a new keep-alive connection; the pid of the worker answering."""
        with self.connect() as sock:
            sock.sendall(request("GET", "/small.txt", close=False))
            response = ResponseReader(sock.makefile("rb")).read()
            assert (response.status, response.body) == (200, SMALL)
            return self.answering_pid(sock)

    def stop(self) -> None:
        self.server.stop()


def _processes() -> Iterator[tuple]:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        yield int(name), int(fields[1]), fields[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _server_inode(port: int, client_port: int) -> str:
    """The socket inode of the server side of 127.0.0.1:client_port -> 127.0.0.1:port."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client_port:04X}"
    deadline = time.monotonic() + HANG
    while True:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == local and fields[2] == remote:
                    return fields[9]
        assert time.monotonic() < deadline, "the connection is not in /proc/net/tcp"
        time.sleep(0.01)


@pytest.fixture
def two(engine: Any, root: Path, launcher: str) -> Iterator[Workers]:
    server = Workers(engine, root, launcher)
    yield server
    server.stop()


def _wait_gone(pids: Set[int]) -> None:
    deadline = time.monotonic() + HANG
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.02)


# -- spreading and replacing -------------------------------------------------------------------

def test_both_workers_answer_new_connections(two):
    workers = two.wait_for_workers()
    answered = {two.get_small() for _ in range(40)}
    # The kernel hashes each connection to one listener: 40 on one of two is 2**-39.
    assert answered == workers


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(two):
    workers = two.wait_for_workers()
    victim = min(workers)
    mark = two.server.mark()
    os.kill(victim, signal.SIGKILL)
    two.server.wait_for(lambda l: f"worker {victim} killed by SIGKILL" in l, start=mark)
    now = two.wait_for_workers(exclude={victim})
    answered = {two.get_small() for _ in range(40)}
    assert answered == now
    assert two.server.proc.poll() is None


# -- stopping -----------------------------------------------------------------------------------

def _start_download(server: Workers) -> tuple:
    """A GET of big.bin whose client has read only the head and the first bytes."""
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.sendall(request("GET", "/big.bin"))
    stream = sock.makefile("rb")
    status = stream.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    while stream.readline() not in (b"\r\n", b""):
        pass
    first = stream.read(1 << 16)
    return sock, stream, first


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=HANG).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("how", ["SIGTERM to the parent", "Ctrl-C to the group"])
def test_stop_finishes_a_slow_download_byte_exact_then_exits_0(engine, root, launcher, how):
    server = Workers(engine, root, launcher, grace=20.0, new_session=True)
    try:
        workers = server.wait_for_workers()
        sock, stream, first = _start_download(server)
        with sock, stream:
            mark = server.server.mark()
            if how == "SIGTERM to the parent":
                os.kill(server.pid, signal.SIGTERM)
            else:  # what the terminal does: every process of the group gets it
                os.killpg(server.pid, signal.SIGINT)
            server.server.wait_for(lambda l: l.startswith("fastwrap serve: Stopping"),
                                   start=mark)
            # No new connection is taken while the download goes on.
            deadline = time.monotonic() + HANG
            while not _refused(server.port):
                assert time.monotonic() < deadline, "still accepting after the stop"
                time.sleep(0.02)
            assert server.server.proc.poll() is None  # it waits for the download
            rest = stream.read()
        assert first + rest == BIG, (len(first + rest), server.server.lines[-5:])
        assert server.server.proc.wait(HANG) == 0
        _wait_gone(workers)
    finally:
        server.stop()


def test_a_second_sigint_exits_at_once(engine, root, launcher):
    server = Workers(engine, root, launcher, grace=600.0)
    try:
        workers = server.wait_for_workers()
        sock, stream, first = _start_download(server)
        with sock, stream:
            mark = server.server.mark()
            os.kill(server.pid, signal.SIGINT)
            server.server.wait_for(lambda l: l.startswith("fastwrap serve: Stopping"),
                                   start=mark)
            assert server.server.proc.poll() is None  # the download holds the first stop
            os.kill(server.pid, signal.SIGINT)
            # Well before the 600 s of grace: HANG only guards the run.
            assert server.server.proc.wait(HANG) == 128 + signal.SIGINT
            _wait_gone(workers)
            assert len(first + stream.read()) < len(BIG)  # the download was cut
    finally:
        server.stop()


def test_no_worker_outlives_a_parent_killed_with_sigkill(engine, root, launcher):
    server = Workers(engine, root, launcher, grace=2.0)
    try:
        workers = server.wait_for_workers()
        os.kill(server.pid, signal.SIGKILL)
        server.server.proc.wait(HANG)
        _wait_gone(workers)
    finally:
        server.stop()


def test_no_worker_outlives_a_clean_stop(two):
    workers = two.wait_for_workers()
    two.get_small()
    os.kill(two.pid, signal.SIGTERM)
    assert two.server.proc.wait(HANG) == 0
    _wait_gone(workers)


# -- the access log -----------------------------------------------------------------------------

def test_access_log_has_one_whole_line_per_request_from_both_workers(two):
    workers = two.wait_for_workers()
    mark = two.server.mark()
    # Long lines (targets of 2 KB) make a torn or interleaved write likely to show.
    tags = [unique("w") + "x" * 2000 for _ in range(200)]
    answered: Set[int] = set()

    def fetch(tag: str) -> int:
        with two.connect() as sock:
            sock.sendall(request("GET", f"/small.txt?{tag}", close=False))
            response = ResponseReader(sock.makefile("rb")).read()
            assert (response.status, response.body) == (200, SMALL)
            return two.answering_pid(sock)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered.update(pool.map(fetch, tags))
    assert answered == workers
    two.server.wait_for(lambda l: tags[-1] in l, start=mark)
    for tag in tags:
        two.server.wait_for(lambda l: tag in l, start=mark)
    lines = two.server.since(mark)
    for line in lines:
        match = ACCESS.match(line)
        assert match is not None, f"not one whole access-log line: {line[:300]!r}"
        assert match["status"] == "200" and match["size"] == str(len(SMALL))
    for tag in tags:
        assert sum(tag in line for line in lines) == 1
    assert len(lines) == len(tags)


# -- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_bad_workers_get_the_parsers_one_line_error(engine, value):
    from _static_support import run_cli
    result = run_cli(engine, "serve", "--workers", value)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("fastwrap serve: error: argument --workers")
