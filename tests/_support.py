"""What the tests share: peers that read everything, sources of every kind, fd counts.

Kept out of conftest.py so that test modules can import the helpers by name.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import mmap
import os
import random
import selectors
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

LINUX = sys.platform.startswith("linux")

import pytest  # noqa: E402

needs_linux = pytest.mark.skipif(not LINUX, reason="Linux-only kernel behaviour")
# The directory the fastwrap under test is imported from (src/ in a checkout).
SRC = Path(importlib.util.find_spec("fastwrap").origin).resolve().parents[1]

#: How long a helper waits for a peer before calling the test hung.  Only a
#: guard against hanging the whole run: no test asserts on elapsed time.
HANG = 60.0


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def recv_until_eof(sock: socket.socket) -> bytes:
    """Everything the peer sends on *sock* until it closes its side."""
    received = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(received)
        received += chunk


def open_fds() -> int:
    """How many descriptors this process has open (after collecting garbage)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


#: Code a child runs first, so that SIGINT raises KeyboardInterrupt there.  A
#: child inherits an ignored SIGINT (the suite started in the background by a
#: script, or under ``trap '' INT``) and Python then keeps ignoring it, as a
#: program should: the Ctrl-C tests would send a signal nobody receives.
CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def python_m(module: str, *args: str) -> list:
    """The argv of ``python -m MODULE ARGS``, which SIGINT interrupts whatever we ignore."""
    run = f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", CTRL_C + run, *args]


def run_python(code: str, *, env: Optional[dict] = None, timeout: float = HANG,
               args: Sequence[str] = (), **kwargs: Any) -> subprocess.CompletedProcess:
    """Run *code* in a fresh interpreter that imports fastwrap from src/."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE")}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


# -- the receiving end ---------------------------------------------------------------

class Reader(threading.Thread):
    """Reads everything the peer socket receives until EOF, in a thread.

    *sink*, when given, sees every chunk (as a memoryview) instead of it being
    kept; *pause* makes a slow reader; *gate* holds reading back until set;
    *on_first* runs once after the first chunk arrived.
    """

    def __init__(self, sock: socket.socket, *, sink: Optional[Callable[[memoryview], None]] = None,
                 bufsize: int = 256 * 1024, pause: float = 0.0,
                 gate: Optional[threading.Event] = None,
                 on_first: Optional[Callable[[], None]] = None,
                 limit: Optional[int] = None) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.sink = sink
        self.bufsize = bufsize
        self.pause = pause
        self.gate = gate
        self.on_first = on_first
        self.limit = limit  # stop (without closing) after this many bytes
        self.data = bytearray()
        self.length = 0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        buf = bytearray(self.bufsize)
        view = memoryview(buf)
        try:
            if self.gate is not None:
                self.gate.wait()
            while self.limit is None or self.length < self.limit:
                want = self.bufsize if self.limit is None else min(self.bufsize,
                                                                   self.limit - self.length)
                try:
                    n = self.sock.recv_into(view[:want])
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    n = 0
                if n == 0:
                    break
                if self.sink is None:
                    self.data += view[:n]
                else:
                    self.sink(view[:n])
                self.length += n
                if self.on_first is not None:
                    on_first, self.on_first = self.on_first, None
                    on_first()
                if self.pause:
                    threading.Event().wait(self.pause)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self) -> bytes:
        self.join(HANG)
        if self.is_alive():
            raise AssertionError(f"the peer was still reading after {HANG} s")
        if self.error is not None:
            raise self.error
        return bytes(self.data)


class Link:
    """A connected pair: *dest* is what fastwrap writes to, *peer* reads it."""

    def __init__(self, kind: str, dest: socket.socket, peer: socket.socket) -> None:
        self.kind = kind
        self.dest = dest
        self.peer = peer

    def reader(self, **kwargs: Any) -> Reader:
        reader = Reader(self.peer, **kwargs)
        reader.start()
        return reader

    def finish(self) -> None:
        """End the stream so the reader sees EOF."""
        with contextlib.suppress(OSError):
            self.dest.shutdown(socket.SHUT_WR)

    def exchange(self, send: Callable[[], Any], **kwargs: Any) -> tuple[Any, bytes]:
        """Run *send* while a reader collects; return its result and the bytes."""
        reader = self.reader(**kwargs)
        try:
            result = send()
        finally:
            self.finish()
        return result, reader.result()

    def shrink_buffers(self, size: int = 64 * 1024) -> None:
        """Small kernel buffers, so that a peer that does not read blocks the sender soon."""
        self.dest.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def close(self) -> None:
        for sock in (self.dest, self.peer):
            with contextlib.suppress(OSError):
                sock.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a TCP connection on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def make_link(kind: str, tls: Optional[tuple[ssl.SSLContext, ssl.SSLContext]] = None) -> Link:
    if kind == "socketpair":
        dest, peer = socket.socketpair()
        return Link(kind, dest, peer)
    if kind == "tcp":
        dest, peer = tcp_pair()
        return Link(kind, dest, peer)
    if kind == "tls":
        assert tls is not None
        server_ctx, client_ctx = tls
        raw_dest, raw_peer = tcp_pair()
        box: dict = {}

        def client_side() -> None:
            try:
                box["peer"] = client_ctx.wrap_socket(raw_peer, server_hostname="localhost")
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=client_side, daemon=True)
        thread.start()
        dest = server_ctx.wrap_socket(raw_dest, server_side=True)
        thread.join(HANG)
        if "error" in box:
            raise box["error"]
        return Link(kind, dest, box["peer"])
    raise ValueError(kind)


def send_until_blocked(tx: Any) -> int:
    """Call send() until it raises BlockingIOError; return what the calls reported."""
    moved = 0
    for _ in range(100_000):
        try:
            moved += tx.send()
        except BlockingIOError:
            return moved
        if tx.done:
            raise AssertionError("the transmission ended before the peer's buffer filled")
    raise AssertionError("send() never raised BlockingIOError")


def drive(tx: Any, sock: Any, *, on_block: Optional[Callable[[], None]] = None) -> int:
    """Run a Transmission to the end as a selectors-based server would.

    Returns the sum of what send() reported (headers included).
    """
    moved = 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while not tx.done:
            try:
                moved += tx.send()
            except BlockingIOError:
                if on_block is not None:
                    on_block()
                if not sel.select(HANG):
                    raise AssertionError(f"dest not writable for {HANG} s")
    return moved


# -- the sending end --------------------------------------------------------------

class ReadOnly:
    """A file-like object with nothing but read(): only the read path fits it."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)
        self.reads = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return self._io.read(size)

    def close(self) -> None:
        self.closed = True


class Sources:
    """Makes sources of every kind from bytes, and closes them all at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stack = contextlib.ExitStack()
        self._n = 0

    def path(self, data: bytes) -> Path:
        self._n += 1
        path = self.directory / f"source-{self._n}.bin"
        path.write_bytes(data)
        return path

    def file(self, data: bytes, mode: str = "rb", **kwargs: Any) -> Any:
        return self.opened(self.path(data), mode, **kwargs)

    def opened(self, path: Any, mode: str = "rb", **kwargs: Any) -> Any:
        f = open(path, mode, **kwargs)
        self._stack.callback(f.close)
        return f

    def mmap(self, data: bytes) -> mmap.mmap:
        f = self.file(data)
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._stack.callback(m.close)
        return m

    def pipe(self, data: bytes, *, buffering: int = -1, nonblocking: bool = False,
             pieces: int = 1) -> Any:
        """The read end of a pipe that a thread fills with *data*, then closes."""
        r, w = os.pipe()
        if nonblocking:
            os.set_blocking(r, False)
        reader = open(r, "rb", buffering=buffering)
        self._stack.callback(reader.close)
        step = max(1, -(-len(data) // pieces))

        def feed() -> None:
            view = memoryview(data)
            try:
                for start in range(0, len(data), step):
                    piece = view[start:start + step]
                    while piece:
                        piece = piece[os.write(w, piece):]
                    if pieces > 1:
                        threading.Event().wait(0.002)
            except OSError:
                pass  # the test closed the read end early
            finally:
                os.close(w)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        # Runs before reader.close (LIFO): close the read end first so a
        # blocked writer wakes with EPIPE, then wait for it.
        self._stack.callback(thread.join, HANG)
        self._stack.callback(reader.close)
        return reader

    def of_path(self, path: str, data: bytes) -> Any:
        """A source that the transmission engine sends along *path*."""
        if path == "sendfile":
            return self.file(data)
        if path == "splice":
            return self.pipe(data)
        if path == "mmap":
            return data
        if path == "readinto":
            return io.BytesIO(data)
        if path == "read":
            return ReadOnly(data)
        raise ValueError(path)

    def close(self) -> None:
        self._stack.close()


def expected_path(engine: Any, path: str) -> str:
    """The path *engine* takes for the source of_path(path) makes."""
    if path == "splice" and "splice" not in engine.SUPPORTED_PATHS:
        return "readinto"  # e.g. the pure engine before Python 3.10
    return path


ALL_PATHS = ("sendfile", "splice", "mmap", "readinto", "read")
