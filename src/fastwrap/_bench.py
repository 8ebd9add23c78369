"""Measure fastwrap against the standard library's ways of sending files, on this machine.

One run of interleaved rounds: every round visits every table, and each table
every contender in turn (the order rotating from round to round), so that a
slow moment of the machine falls on all of them alike.  Tables:

  a) throughput (GB/s) and the sender's CPU seconds per GB of each fastwrap
     path -- sendfile, splice from a pipe, mmap, readinto, read -- in both
     engines, against wsgiref.util.FileWrapper iterated into sendall(),
     socket.sendfile() and shutil.copyfileobj() into sock.makefile("wb") (as
     http.server does), for 4 KiB, 1 MiB and a large file from the page
     cache, on loopback TCP and on a socketpair;
  b) HTTP requests per second of `fastwrap serve` against
     `python -m http.server` and the stock wsgiref.simple_server running
     fastwrap.static.StaticFiles, for 4 KiB and 1 MiB files;
  c) the cost of one 4 KiB transmission, raw and as overhead over a bare
     os.sendfile() of the same bytes in the same round (the kernel's share);
  d) a pipe source and a TLS destination against the read loop
     (`while chunk := f.read(65536): sock.sendall(chunk)`).

A helper process drains every connection, so the CPU counted is the sender's
own; HTTP servers and clients run in processes of their own.  Each figure is
the median over the rounds with its [min..max]; a ratio xN is fastwrap's median
over the baseline's, turned so that N > 1 means fastwrap does better (faster,
or less CPU).  Needs only the standard library; the TLS row needs the openssl
command, --plot needs matplotlib.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import importlib
import json
import mmap
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wsgiref.util
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, BinaryIO, Callable, ContextManager, Iterator, Optional, Sequence, TextIO

import fastwrap
from fastwrap import _paths

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    ssl = None  # type: ignore[assignment]

KIB = 1024
MIB = 1024 * KIB
SMALL = 4 * KIB
MEDIUM = 1 * MIB
CHUNK = 65536                  # the read loop's chunk, as in the stdlib's copy loops
HANG = 600.0                   # how long a reply from a helper may take before the run is hung
START_TIMEOUT = 60.0           # how long a server may take to say where it listens
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

FASTWRAP = "fastwrap"
BASELINE = "baseline"
REFERENCE = "reference"


class BenchError(Exception):
    """A contender or a helper failed; the message says which and why."""


# -- arguments ------------------------------------------------------------------

def _at_least_one(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must be a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1, got {value}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastwrap bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds: small sizes, 2 rounds")
    parser.add_argument("--rounds", type=_at_least_one("--rounds"), default=None, metavar="N",
                        help="interleaved rounds (default: 5; 2 with --quick)")
    parser.add_argument("--size-mib", type=_at_least_one("--size-mib"), default=None,
                        metavar="N", help="size of the large file in MiB "
                                          "(default: 256; 2 with --quick)")
    parser.add_argument("--json", metavar="FILE",
                        help="write every round's figures and the machine's description here")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw a bar chart of the medians (needs matplotlib)")


@dataclass(frozen=True)
class Settings:
    """How much to measure: sizes, transmissions per sample, rounds."""

    rounds: int
    quick: bool
    large: int
    small_times: int       # 4 KiB transmissions per sample
    medium_times: int      # 1 MiB transmissions per sample
    cost_times: int        # 4 KiB transmissions per sample, when their cost is the question
    http_seconds: float    # how long the clients send requests, per sample
    clients: int           # HTTP client processes

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        quick = bool(args.quick)
        rounds = args.rounds or (2 if quick else 5)
        size_mib = args.size_mib or (2 if quick else 256)
        if quick:
            return cls(rounds, quick, size_mib * MIB, small_times=64, medium_times=4,
                       cost_times=128, http_seconds=0.1, clients=2)
        return cls(rounds, quick, size_mib * MIB, small_times=512, medium_times=32,
                   cost_times=1024, http_seconds=0.3, clients=2)


# -- what is measured, and what came of it --------------------------------------

@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    tag: str = ""          # follows the baseline in the headers of its ratio columns


GBPS = Metric("gbps", "GB/s", True)
CPU_PER_GB = Metric("cpu_s_per_gb", "CPU s/GB", False)
REQUESTS = Metric("requests_per_s", "req/s", True)
MICROS = Metric("us_per_transmission", "us/transmission", False)
CPU_MICROS = Metric("cpu_us_per_transmission", "CPU us", False)
OVERHEAD = Metric("overhead_us", "overhead us", False, tag="ovh")


@dataclass
class Sample:
    """One measurement: its figures and the fastwrap paths its transmissions ended on."""

    values: dict[str, float]
    paths: dict[str, int] = field(default_factory=dict)


@dataclass
class Contender:
    """One way of sending, measured once per round."""

    name: str
    role: str                                    # FASTWRAP, BASELINE or REFERENCE
    measure: Optional[Callable[[bool], Sample]]   # True: a warm-up, whose figures are dropped
    short: str = ""                              # its column label, as a baseline
    engine: Optional[str] = None
    path: Optional[str] = None                   # the fastwrap path it must take
    skipped: Optional[str] = None
    failed: Optional[str] = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    paths: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.skipped is None and self.failed is None and self.measure is not None

    def values(self, key: str) -> list[float]:
        return [entry[key] for entry in self.rounds]


@dataclass
class Table:
    """Contenders measured alike, and the pairs whose ratios are reported."""

    key: str
    section: str
    title: str
    metrics: tuple[Metric, ...]
    contenders: list[Contender]
    pairs: list[tuple[str, str]]                 # (fastwrap contender, baseline) names
    shown: tuple[Metric, ...]                    # metrics with ratio columns in the text table
    notes: tuple[str, ...] = ()
    warmup: bool = True
    reference: Optional[str] = None              # overhead is measured against this one
    derived: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)

    def contender(self, name: str) -> Contender:
        for contender in self.contenders:
            if contender.name == name:
                return contender
        raise KeyError(name)


SECTION_NOTES = {
    "a": ("splice rows read a pipe (buffered, as subprocess makes them) that a helper process "
          "fills with the file;",
          "readinto and read rows are fastwrap with the faster paths switched off.",),
    "b": ("http.server and wsgiref.simple_server answer HTTP/1.0, one request per connection "
          "(the client reconnects),",
          "and write their request logs to DEVNULL; fastwrap serve keeps the connection alive.",),
    "c": ("overhead: us per transmission less a bare os.sendfile's in the same round "
          "(the kernel's share);",
          "CPU us: the sender's CPU time per transmission; x ... ovh: the ratio of the "
          "overheads.",),
    "d": ("[path]: the fastwrap path the transmissions took.",),
}

SECTIONS = {
    "a": "a) Throughput from the page cache, and the sender's CPU per GB",
    "b": "b) HTTP requests per second",
    "c": "c) Cost of one 4 KiB transmission (many on one connection)",
    "d": "d) A pipe source and a TLS destination, against the read loop",
}


# -- the processes the bench starts -----------------------------------------------

# A helper process: `python -c HELPER_CODE ROLE FD`, taking orders over a socketpair.
HELPER_CODE = ("import sys; from fastwrap._bench import helper_main; "
               "sys.exit(helper_main(sys.argv[1:]))")

# Runs `python -m MODULE ARGS...` in a process that exits when its stdin closes,
# so that no server outlives the bench, even one killed without a chance to clean up.
_WATCHDOG = (
    "import os, sys, threading\n"
    "def _watch():\n"
    "    sys.stdin.buffer.read()\n"
    "    os._exit(0)\n"
    "threading.Thread(target=_watch, daemon=True).start()\n"
)
RUN_MODULE_CODE = _WATCHDOG + (
    "import runpy\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)
# The stock wsgiref.simple_server (one request per connection, one connection at
# a time) with its stock handler, serving StaticFiles; its log goes to DEVNULL.
WSGIREF_CODE = _WATCHDOG + (
    "from wsgiref.simple_server import make_server\n"
    "from fastwrap.static import StaticFiles\n"
    "server = make_server('127.0.0.1', 0, StaticFiles(sys.argv[1]))\n"
    "print('listening on port', server.server_address[1], flush=True)\n"
    "server.serve_forever()\n"
)


def _child_env() -> dict[str, str]:
    """The environment of every child: it imports this very fastwrap."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastwrap.__file__)))
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([here] + rest)
    return env


def _tail(path: str, limit: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text[-limit:]


class Children:
    """Every process the bench starts; stop() ends them all, however the bench ends.

    Children start in sessions of their own, so Ctrl-C reaches only the bench,
    which then stops them in order instead of leaving each to print a traceback.
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self._processes: list[subprocess.Popen[bytes]] = []
        self._files: list[BinaryIO] = []

    def start(self, name: str, argv: Sequence[str], *, stdout_to_log: bool = False,
              stderr_to_log: bool = True, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        """Start *argv* with its output in log(*name*) or DEVNULL, and stdin a pipe.

        The servers that log every request log to DEVNULL: only the line
        saying where they listen is needed, and they print it on stdout.
        """
        log = open(self.log(name), "wb")
        self._files.append(log)
        process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE,
            stdout=log if stdout_to_log else subprocess.DEVNULL,
            stderr=log if stderr_to_log else subprocess.DEVNULL,
            pass_fds=tuple(pass_fds), env=_child_env(), start_new_session=True)
        self._processes.append(process)
        return process

    def log(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def stop(self) -> None:
        for process in self._processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.terminate()
        deadline = time.monotonic() + 5
        for process in self._processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for log in self._files:
            log.close()
        self._files.clear()


class Helper:
    """A helper process (drain, feed or client) and the socketpair that gives it orders.

    It exits when the socketpair closes, so it cannot outlive the bench.
    """

    def __init__(self, children: Children, role: str, name: str) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.process = children.start(
                name, [sys.executable, "-c", HELPER_CODE, role, str(theirs.fileno())],
                pass_fds=[theirs.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.settimeout(HANG)
        self.ctl = mine
        self.name = name
        self._log = children.log(name)
        self._lines = mine.makefile("rb")

    def died(self, what: str) -> BenchError:
        code = self.process.poll()
        state = "is gone" if code is None else f"exited with status {code}"
        tail = _tail(self._log)
        return BenchError(f"the {self.name} helper {state} {what}" + (f": {tail}" if tail else ""))

    def send_fd(self, message: bytes, fd: int) -> None:
        try:
            socket.send_fds(self.ctl, [message], [fd])
        except OSError:
            raise self.died("before taking an order") from None

    def send_line(self, line: str) -> None:
        try:
            self.ctl.sendall(line.encode("utf-8") + b"\n")
        except OSError:
            raise self.died("before taking an order") from None

    def read_line(self) -> str:
        try:
            line = self._lines.readline()
        except OSError:
            line = b""
        if not line.endswith(b"\n"):
            raise self.died("before answering")
        return line.decode("utf-8").rstrip("\n")

    def close(self) -> None:
        self._lines.close()
        self.ctl.close()


def helper_main(argv: Sequence[str]) -> int:
    """Entry point of the helper processes: ``drain``, ``feed`` or ``client`` ROLE FD."""
    role, fd = argv[0], int(argv[1])
    ctl = socket.socket(fileno=fd)
    loops: dict[str, Callable[[socket.socket], None]] = {
        "drain": _drain_loop, "feed": _feed_loop, "client": _client_loop}
    try:
        loops[role](ctl)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the bench went away: nothing left to do
    finally:
        ctl.close()
    return 0


# -- helper: the receiving end ------------------------------------------------------

def _drain_loop(ctl: socket.socket) -> None:
    """Read every connection handed over to its end, then report the byte count."""
    buffer = memoryview(bytearray(MIB))
    while True:
        message, fds, _flags, _addr = socket.recv_fds(ctl, 64, 1)
        if not message:
            return
        if not fds:
            raise RuntimeError(f"an order without a connection: {message!r}")
        count = _drain(socket.socket(fileno=fds[0]), message == b"tls", buffer)
        ctl.sendall(struct.pack("!q", count))


def _drain(sock: socket.socket, tls: bool, buffer: memoryview) -> int:
    count = 0
    try:
        if tls:
            assert ssl is not None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # A throwaway certificate on loopback: the bytes are counted, not trusted.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname="localhost")
        while True:
            n = sock.recv_into(buffer)
            if not n:
                break
            count += n
    except OSError:
        pass  # a reset, or TLS ending without close_notify: the end all the same
    finally:
        sock.close()
    return count


# -- helper: filling pipes ---------------------------------------------------------

def _feed_loop(ctl: socket.socket) -> None:
    """Write a file into each pipe handed over, as many times as asked, then close it."""
    while True:
        message, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 1)
        if not message:
            return
        if not fds:
            raise RuntimeError(f"an order without a pipe: {message!r}")
        name, times = message.decode("utf-8").split("\0")
        try:
            _feed(fds[0], name, int(times))
            reply = "ok"
        except OSError as exc:
            reply = f"{type(exc).__name__}: {exc}"
        finally:
            os.close(fds[0])
        ctl.sendall(reply.encode("utf-8") + b"\n")


def _feed(out: int, name: str, times: int) -> None:
    with open(name, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        use_sendfile = hasattr(os, "sendfile")
        for _ in range(times):
            offset = 0
            while offset < size:
                if use_sendfile:
                    try:
                        n = os.sendfile(out, fd, offset, size - offset)
                    except OSError as exc:
                        # sendfile(2) to a pipe is Linux's; elsewhere copy.
                        if exc.errno not in (errno.EINVAL, errno.ENOTSOCK, errno.EOPNOTSUPP,
                                             errno.ENOSYS):
                            raise
                        use_sendfile = False
                        continue
                else:
                    chunk = memoryview(os.pread(fd, min(MIB, size - offset), offset))
                    n = len(chunk)
                    while chunk:
                        chunk = chunk[os.write(out, chunk):]
                if n == 0:
                    raise OSError(errno.EIO, f"{name} shrank while being fed")
                offset += n


# -- helper: the HTTP client -----------------------------------------------------------

class HttpError(Exception):
    """A response that is not the one asked for."""


def _client_loop(ctl: socket.socket) -> None:
    """Run each order (a JSON line) and answer with what came of it (a JSON line)."""
    lines = ctl.makefile("rb")
    for line in lines:
        order = json.loads(line)
        try:
            result = _hammer(int(order["port"]), str(order["path"]), int(order["size"]),
                             float(order["seconds"]))
        except (OSError, HttpError, ValueError) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        ctl.sendall(json.dumps(result).encode("utf-8") + b"\n")


def _hammer(port: int, path: str, size: int, seconds: float) -> dict[str, Any]:
    """GET *path* one request after another for *seconds*, checking every response.

    HTTP/1.1 keep-alive; when the server closes (HTTP/1.0, ``Connection:
    close``) it reads to the end and reconnects.  The request's bytes are
    built once and every body lands in the same buffer.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("ascii")
    buffer = memoryview(bytearray(MIB))
    sock: Optional[socket.socket] = None
    requests = connections = 0
    fresh = False
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while requests == 0 or time.perf_counter() < deadline:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections += 1
                fresh = True
            sock.sendall(request)
            keep_alive = _read_response(sock, buffer, size)
            if keep_alive is None:  # an idle keep-alive connection the server closed
                if fresh:
                    raise HttpError("the server closed a new connection without answering")
                sock.close()
                sock = None
                continue
            requests += 1
            fresh = False
            if not keep_alive:
                if sock.recv_into(buffer):
                    raise HttpError("bytes after the body of a response that closes")
                sock.close()
                sock = None
        elapsed = time.perf_counter() - start
    finally:
        if sock is not None:
            sock.close()
    return {"requests": requests, "seconds": elapsed, "connections": connections}


def _read_response(sock: socket.socket, buffer: memoryview, size: int) -> Optional[bool]:
    """Read one response of *size* body bytes; whether the connection stays open.

    None when the connection was closed before any byte of it.
    """
    head = bytearray()
    end = -1
    while end < 0:
        n = sock.recv_into(buffer, 8192)  # the headers, and perhaps a little of the body
        if n == 0:
            if not head:
                return None
            raise HttpError("the connection closed inside the headers")
        head += buffer[:n]
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) > 65536:
            raise HttpError("no end of headers in 64 KiB")
    lines = bytes(head[:end]).split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[1] != b"200":
        raise HttpError(f"status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" not in headers:
        raise HttpError("no Content-Length")
    length = int(headers[b"content-length"])
    if length != size:
        raise HttpError(f"Content-Length {length}, expected {size}")
    remaining = length - (len(head) - end - 4)
    if remaining < 0:
        raise HttpError("more bytes than Content-Length")
    while remaining:
        n = sock.recv_into(buffer, min(remaining, len(buffer)))
        if n == 0:
            raise HttpError(f"the connection closed {remaining} bytes short")
        remaining -= n
    connection = headers.get(b"connection", b"").lower()
    if status[0] == b"HTTP/1.0":
        return connection == b"keep-alive"
    return connection != b"close"


# -- connections a helper drains -------------------------------------------------------

class Connection:
    """A sending socket whose far end the drain helper reads and counts."""

    def __init__(self, sock: socket.socket, drain: Helper) -> None:
        self.sock = sock
        self._drain = drain
        self._answered = False

    def finish(self, expected: int) -> None:
        """End the stream and wait until the receiver has read all of it."""
        self.sock.shutdown(socket.SHUT_WR)
        received = self._received()
        if received != expected:
            raise BenchError(f"the receiver got {received} bytes, expected {expected}")

    def _received(self) -> int:
        self._answered = True
        reply = b""
        while len(reply) < 8:
            try:
                chunk = self._drain.ctl.recv(8 - len(reply))
            except OSError:
                chunk = b""
            if not chunk:
                raise self._drain.died("before counting a connection")
            reply += chunk
        return int(struct.unpack("!q", reply)[0])

    def close(self) -> None:
        self.sock.close()
        if not self._answered:  # a failed sample: keep the drain's answers in step
            with contextlib.suppress(BenchError):
                self._received()


class Links:
    """Makes connections of each kind -- tcp, socketpair, tls -- to the drain helper."""

    def __init__(self, drain: Helper, tls: Optional[Any]) -> None:
        self._drain = drain
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))

    @contextlib.contextmanager
    def connect(self, kind: str) -> Iterator[Connection]:
        if kind == "socketpair":
            mine, theirs = socket.socketpair()
        else:
            mine = socket.create_connection(self._listener.getsockname())
            theirs, _ = self._listener.accept()
            mine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._drain.send_fd(b"tls" if kind == "tls" else b"plain", theirs.fileno())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        connection = Connection(mine, self._drain)
        try:
            if kind == "tls":
                assert self._tls is not None
                connection.sock = self._tls.wrap_socket(mine, server_side=True)
            yield connection
        finally:
            connection.close()

    def close(self) -> None:
        self._listener.close()


@contextlib.contextmanager
def fed_pipe(feeder: Helper, name: str, times: int) -> Iterator[BinaryIO]:
    """The read end of a pipe the feed helper fills with *times* copies of file *name*."""
    r, w = os.pipe()
    try:
        feeder.send_fd(f"{name}\0{times}".encode("utf-8"), w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    reader = open(r, "rb")
    try:
        yield reader
    finally:
        reader.close()  # a feeder still writing gets EPIPE and answers
        answer = feeder.read_line()
    if answer != "ok":
        raise BenchError(f"feeding the pipe failed: {answer}")


# -- measuring -----------------------------------------------------------------------

SendOne = Callable[[], None]
# A way of sending: given the socket and the transmissions to come, a context
# whose setup and teardown are not timed and which yields one transmission.
Way = Callable[[socket.socket, int], ContextManager[SendOne]]


def _path_counts() -> dict[str, int]:
    return {path: entry["transmissions"] for path, entry in fastwrap.stats().items()}


def transfer(links: Links, kind: str, way: Way, times: int, size: int,
             expect_path: Optional[str]) -> tuple[float, float, dict[str, int]]:
    """Time *times* transmissions of *size* bytes on one connection.

    The clock stops when the receiving process has counted every byte, so
    bytes still in socket buffers are not taken for bytes sent.  Returns
    (wall seconds, CPU seconds of this process, transmissions per fastwrap path).
    """
    with links.connect(kind) as connection, way(connection.sock, times) as send_one:
        before = _path_counts()
        cpu_start = time.process_time()
        start = time.perf_counter()
        for _ in range(times):
            send_one()
        connection.finish(times * size)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        after = _path_counts()
    paths = {path: after[path] - before[path] for path in after if after[path] != before[path]}
    if expect_path is not None and paths != {expect_path: times}:
        raise BenchError(f"expected {times} transmissions by {expect_path}, got {paths}")
    return seconds, cpu, paths


def throughput_sample(links: Links, kind: str, way: Way, times: int, size: int,
                      expect_path: Optional[str]) -> Sample:
    seconds, cpu, paths = transfer(links, kind, way, times, size, expect_path)
    gigabytes = times * size / 1e9
    # CPU time is counted in clock ticks on some systems: never report zero.
    return Sample({"gbps": gigabytes / seconds, "cpu_s_per_gb": max(cpu, 1e-9) / gigabytes},
                  paths)


def cost_sample(links: Links, kind: str, way: Way, times: int, size: int,
                expect_path: Optional[str]) -> Sample:
    seconds, cpu, paths = transfer(links, kind, way, times, size, expect_path)
    return Sample({"us_per_transmission": seconds / times * 1e6,
                   "cpu_us_per_transmission": max(cpu, 1e-9) / times * 1e6}, paths)


@contextlib.contextmanager
def paths_off(paths: Sequence[str]) -> Iterator[None]:
    """Switch *paths* off for a moment, so that a file takes a slower path."""
    already = _paths.disabled()
    if paths:
        fastwrap.disable(*paths)
    try:
        yield
    finally:
        back = [path for path in paths if path not in already]
        if back:
            fastwrap.enable(*back)


def fastwrap_file_way(engine: Any, f: BinaryIO, off: Sequence[str] = ()) -> Way:
    """A WSGI server's work per response: wrap the file, transmit it."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            f.seek(0)
            engine.FileWrapper(f).transmit(sock)
        with paths_off(off):
            yield send
    return way


def fastwrap_mmap_way(engine: Any, memory: mmap.mmap) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            memory.seek(0)
            engine.FileWrapper(memory).transmit(sock)
        yield send
    return way


def fastwrap_pipe_way(engine: Any, feeder: Helper, name: str, size: int) -> Way:
    """Pipe sources end where the feeder stops: each transmission takes *size* bytes."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with fed_pipe(feeder, name, times) as reader:
            def send() -> None:
                engine.FileWrapper(reader).transmit(sock, size)
            yield send
    return way


def wsgiref_way(f: BinaryIO) -> Way:
    """What a server without a file_wrapper fast path does: iterate, sendall each block."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            f.seek(0)
            for block in wsgiref.util.FileWrapper(f):
                sock.sendall(block)
        yield send
    return way


def socket_sendfile_way(f: BinaryIO) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            f.seek(0)
            sock.sendfile(f)
        yield send
    return way


def copyfileobj_way(f: BinaryIO) -> Way:
    """http.server's way: shutil.copyfileobj into a file made of the socket."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with sock.makefile("wb") as writer:
            def send() -> None:
                f.seek(0)
                shutil.copyfileobj(f, writer)
                writer.flush()
            yield send
    return way


def bare_sendfile_way(f: BinaryIO, size: int) -> Way:
    """The kernel's own cost: os.sendfile of the whole file, nothing around it."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        out, fd = sock.fileno(), f.fileno()

        def send() -> None:
            offset = 0
            while offset < size:
                offset += os.sendfile(out, fd, offset, size - offset)
        yield send
    return way


def read_loop_way(f: BinaryIO) -> Way:
    """The plain loop a file reaches a TLS socket by, or a pipe any socket."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            with contextlib.suppress(OSError):
                f.seek(0)  # a file; a pipe cannot seek and needs not
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                sock.sendall(chunk)
        yield send
    return way


def read_loop_pipe_way(feeder: Helper, name: str) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with fed_pipe(feeder, name, times) as reader:
            with read_loop_way(reader)(sock, times) as send:
                yield send
    return way


def fastwrap_pipe_to_end_way(engine: Any, feeder: Helper, name: str) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with fed_pipe(feeder, name, times) as reader:
            def send() -> None:
                engine.FileWrapper(reader).transmit(sock)
            yield send
    return way


# -- the machine and its engines ------------------------------------------------------

def engines() -> list[tuple[str, Any, Optional[str]]]:
    """(name, module, why it cannot be measured) for the compiled and the pure engine."""
    found: list[tuple[str, Any, Optional[str]]] = []
    try:
        compiled: Any = importlib.import_module("fastwrap._fastwrap")
        found.append(("cython", compiled, None))
    except ImportError as exc:
        built = not (isinstance(exc, ModuleNotFoundError) and exc.name == "fastwrap._fastwrap")
        found.append(("cython", None, f"the compiled engine does not import: {exc}" if built
                      else "the compiled engine is not built"))
    found.append(("python", importlib.import_module("fastwrap._purepy"), None))
    return found


def why_unavailable(engine: Any, path: str) -> Optional[str]:
    if _paths.is_disabled(path):
        return "switched off (FASTWRAP_DISABLE)"
    if path in engine.SUPPORTED_PATHS:
        return None
    if path == "splice" and not sys.platform.startswith("linux"):
        return f"splice(2) is Linux-only (this is {sys.platform})"
    if path == "splice" and not hasattr(os, "splice"):
        return f"os.splice needs Python 3.10 (this is {platform.python_version()})"
    return f"not available in the {engine.IMPLEMENTATION} engine here"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "fastwrap_version": fastwrap.__version__,
        "implementation": fastwrap.IMPLEMENTATION,
        "disabled_paths": sorted(_paths.disabled()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- the files and the certificate -----------------------------------------------------

def write_file(path: str, size: int) -> None:
    """*size* bytes of incompressible data, flushed to disk so no writeback runs later."""
    block = os.urandom(min(size, MIB))
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(block[:left])
        f.flush()
        os.fsync(f.fileno())


def warm(path: str) -> None:
    """Read the file once, so that every contender finds it in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(MIB):
            pass


def make_certificate(workdir: str) -> tuple[Optional[Any], Optional[str]]:
    """A server TLS context with a throwaway self-signed certificate, or why not."""
    if ssl is None:
        return None, "this Python has no ssl module"
    openssl = shutil.which("openssl")
    if openssl is None:
        return None, "no openssl command to make a throwaway certificate"
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    try:
        done = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-days", "1", "-keyout", key, "-out", cert],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"openssl failed: {exc}"
    if done.returncode != 0:
        return None, f"openssl failed: {done.stderr.decode('utf-8', 'replace').strip()[-200:]}"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, None


# -- the servers ------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log: str
    pattern: str               # finds the port in its log
    port: int = 0
    note: str = ""


def start_servers(children: Children, root: str) -> list[Server]:
    """fastwrap serve, python -m http.server and wsgiref.simple_server, all on free ports."""
    python = sys.executable
    fastwrap_serve = children.start(
        "fastwrap serve", [python, "-c", RUN_MODULE_CODE, "fastwrap", "serve", root,
                           "--port", "0", "--quiet"])
    # -u: http.server prints where it listens without flushing.
    http_server = children.start(
        "http.server", [python, "-u", "-c", RUN_MODULE_CODE, "http.server", "--bind",
                        "127.0.0.1", "--directory", root, "0"],
        stdout_to_log=True, stderr_to_log=False)
    wsgiref_server = children.start(
        "wsgiref", [python, "-c", WSGIREF_CODE, root], stdout_to_log=True, stderr_to_log=False)
    return [
        Server("fastwrap serve", fastwrap_serve, children.log("fastwrap serve"),
               r"at http://127\.0\.0\.1:(\d+)/"),
        Server("http.server", http_server, children.log("http.server"), r"port (\d+)"),
        Server("wsgiref", wsgiref_server, children.log("wsgiref"), r"port (\d+)"),
    ]


def wait_until_listening(server: Server) -> None:
    """Read the server's port from its log, where it says it is serving."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        text = _tail(server.log, 4000)
        found = re.search(server.pattern, text)
        if found:
            server.port = int(found.group(1))
            engine = re.search(r"(\w+) engine, (\d+) threads", text)
            if engine:
                server.note = f"{engine.group(1)} engine, {engine.group(2)} threads"
            return
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with status {server.process.returncode} "
                             f"before listening: {text[-400:]}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"{server.name} did not say where it listens in {START_TIMEOUT:.0f} s")
        time.sleep(0.02)


def http_sample(clients: list[Helper], port: int, path: str, size: int,
                seconds: float) -> Sample:
    """Requests per second of all clients together, each on its own connection."""
    order = json.dumps({"port": port, "path": path, "size": size, "seconds": seconds})
    for client in clients:
        client.send_line(order)
    results = [json.loads(client.read_line()) for client in clients]
    for result in results:
        if "error" in result:
            raise BenchError(str(result["error"]))
    rate = sum(float(r["requests"]) / float(r["seconds"]) for r in results)
    return Sample({"requests_per_s": rate})


# -- the tables -------------------------------------------------------------------------

@dataclass
class Bench:
    """Everything the contenders need: files, helpers, links, servers."""

    settings: Settings
    files: dict[int, str]              # size -> path
    opened: dict[int, BinaryIO]
    mapped: dict[int, mmap.mmap]
    links: Links
    feeder: Helper
    clients: list[Helper]
    servers: list[Server]
    server_errors: dict[str, str]
    tls_skip: Optional[str]
    engines: list[tuple[str, Any, Optional[str]]]


def _size_label(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def _link_label(kind: str) -> str:
    labels = {"tcp": "loopback TCP", "socketpair": "socketpair", "tls": "TLS over loopback TCP"}
    return labels[kind]


def _ratio_pairs(contenders: list[Contender], baselines: Sequence[str]) -> list[tuple[str, str]]:
    return [(c.name, b) for c in contenders if c.role == FASTWRAP for b in baselines]


def fastwrap_path_way(bench: Bench, engine: Any, path: str, size: int) -> Way:
    """How to make *engine* send the file of *size* along *path*."""
    f = bench.opened[size]
    if path == "splice":
        return fastwrap_pipe_way(engine, bench.feeder, bench.files[size], size)
    if path == "mmap":
        return fastwrap_mmap_way(engine, bench.mapped[size])
    faster = {"sendfile": (), "readinto": ("sendfile",), "read": ("sendfile", "readinto")}
    return fastwrap_file_way(engine, f, faster[path])


Sampler = Callable[[Links, str, Way, int, int, Optional[str]], Sample]


class Rows:
    """A table's contenders, each measured by *sampler*: *times* transmissions of *size*.

    A warm-up sample makes a sixteenth of the transmissions, and is thrown away.
    """

    def __init__(self, bench: Bench, sampler: Sampler, kind: str, times: int, size: int) -> None:
        self.bench = bench
        self.sampler = sampler
        self.kind = kind
        self.times = times
        self.size = size
        self.contenders: list[Contender] = []

    def add(self, label: str, role: str, way: Optional[Way], *, short: str = "",
            engine: Optional[str] = None, path: Optional[str] = None,
            skipped: Optional[str] = None) -> None:
        measure = None if way is None or skipped else self._measure(way, path)
        self.contenders.append(Contender(label, role, measure, short=short, engine=engine,
                                         path=path, skipped=skipped))

    def _measure(self, way: Way, path: Optional[str]) -> Callable[[bool], Sample]:
        def measure(warmup: bool) -> Sample:
            times = max(1, self.times // 16) if warmup else self.times
            return self.sampler(self.bench.links, self.kind, way, times, self.size, path)
        return measure

    def pairs_with(self, baselines: Sequence[str]) -> list[tuple[str, str]]:
        """Every fastwrap contender against each of *baselines*."""
        return [(c.name, b) for c in self.contenders if c.role == FASTWRAP for b in baselines]

    def baselines(self) -> list[str]:
        return [c.name for c in self.contenders if c.role == BASELINE]


def throughput_table(bench: Bench, which: str, size: int, times: int, kind: str) -> Table:
    """Table a for one file (*which*: small, medium or large) and one kind of link."""
    f = bench.opened[size]
    rows = Rows(bench, throughput_sample, kind, times, size)
    for engine_name, engine, missing in bench.engines:
        for path in fastwrap.PATHS:
            reason = missing if engine is None else why_unavailable(engine, path)
            label = f"fastwrap {engine_name} {path}" + (" (pipe)" if path == "splice" else "")
            rows.add(label, FASTWRAP,
                     None if reason else fastwrap_path_way(bench, engine, path, size),
                     engine=engine_name, path=path, skipped=reason)
    rows.add("wsgiref FileWrapper + sendall", BASELINE, wsgiref_way(f), short="wsgiref")
    rows.add("socket.sendfile", BASELINE, socket_sendfile_way(f), short="sock.sendfile")
    rows.add("copyfileobj to makefile('wb')", BASELINE, copyfileobj_way(f), short="copyfileobj")
    return Table(
        f"a/{which}/{kind}", "a",
        f"{_size_label(size)} file x {times} per sample, {_link_label(kind)}",
        (GBPS, CPU_PER_GB), rows.contenders, rows.pairs_with(rows.baselines()), (GBPS,),
        warmup=times > 1)


def http_table(bench: Bench, size: int) -> Table:
    """Table b for one file size: each server, the same clients."""
    path = f"/{os.path.basename(bench.files[size])}"
    contenders = []
    shorts = {"fastwrap serve": "", "http.server": "http.server", "wsgiref": "wsgiref"}
    labels = {"fastwrap serve": "fastwrap serve",
              "http.server": "python -m http.server",
              "wsgiref": "wsgiref.simple_server + StaticFiles"}
    for server in bench.servers:
        role = FASTWRAP if server.name == "fastwrap serve" else BASELINE
        error = bench.server_errors.get(server.name)

        def measure(warmup: bool, server: Server = server) -> Sample:
            seconds = bench.settings.http_seconds / (4 if warmup else 1)
            return http_sample(bench.clients, server.port, path, size, seconds)
        contenders.append(Contender(labels[server.name], role, None if error else measure,
                                    short=shorts[server.name], skipped=error))
    fastwrap_serve = next((s for s in bench.servers if s.name == "fastwrap serve"), None)
    note = f": {fastwrap_serve.note}" if fastwrap_serve and fastwrap_serve.note else ""
    baselines = [c.name for c in contenders if c.role == BASELINE]
    return Table(
        f"b/{'small' if size == SMALL else 'medium'}", "b",
        f"{_size_label(size)} file, {len(bench.clients)} client processes, "
        f"{bench.settings.http_seconds:g} s per sample",
        (REQUESTS,), contenders, _ratio_pairs(contenders, baselines), (REQUESTS,),
        notes=(f"fastwrap serve{note}",) if note else ())


def cost_table(bench: Bench, kind: str) -> Table:
    """Table c: the cost of one 4 KiB transmission, against the kernel's own."""
    f, times = bench.opened[SMALL], bench.settings.cost_times
    rows = Rows(bench, cost_sample, kind, times, SMALL)
    bare_skip = None if hasattr(os, "sendfile") else "no os.sendfile here"
    rows.add("os.sendfile, bare", REFERENCE, bare_sendfile_way(f, SMALL), skipped=bare_skip)
    for engine_name, engine, missing in bench.engines:
        reason = missing if engine is None else why_unavailable(engine, "sendfile")
        rows.add(f"fastwrap {engine_name}", FASTWRAP,
                 None if reason else fastwrap_file_way(engine, f),
                 short=engine_name, engine=engine_name, path="sendfile", skipped=reason)
    rows.add("socket.sendfile", BASELINE, socket_sendfile_way(f), short="sock.sendfile")
    pairs = rows.pairs_with(["socket.sendfile"])
    if len(bench.engines) > 1:
        pairs.append(("fastwrap cython", "fastwrap python"))
    return Table(
        f"c/{kind}", "c", f"4 KiB x {times} per sample, {_link_label(kind)}",
        (MICROS, CPU_MICROS), rows.contenders, pairs, (OVERHEAD,), reference="os.sendfile, bare")


def read_loop_table(bench: Bench, source: str) -> Table:
    """Table d: the large file through a pipe to TCP, or 1 MiB files to a TLS socket.

    TLS runs at a fraction of plain TCP's speed: many 1 MiB files keep its samples short.
    """
    if source == "pipe":
        kind, size, times = "tcp", bench.settings.large, 1
        skip = None
        title = f"a pipe (filled by a helper process) to {_link_label(kind)}, {_size_label(size)}"
    else:
        kind, size, times = "tls", MEDIUM, bench.settings.medium_times
        skip = bench.tls_skip
        title = f"{_size_label(size)} file x {times} per sample, {_link_label(kind)}"
    name, f = bench.files[size], bench.opened[size]
    rows = Rows(bench, throughput_sample, kind, times, size)
    for engine_name, engine, missing in bench.engines:
        way = None
        if engine is not None:
            way = (fastwrap_pipe_to_end_way(engine, bench.feeder, name) if source == "pipe"
                   else fastwrap_file_way(engine, f))
        rows.add(f"fastwrap {engine_name}", FASTWRAP, way, engine=engine_name,
                 skipped=missing or skip)
    loop = read_loop_pipe_way(bench.feeder, name) if source == "pipe" else read_loop_way(f)
    rows.add("read loop + sendall", BASELINE, loop, short="read loop", skipped=skip)
    return Table(
        f"d/{source}/{kind}", "d", title, (GBPS, CPU_PER_GB), rows.contenders,
        rows.pairs_with(rows.baselines()), (GBPS,), warmup=times > 1)


def build_tables(bench: Bench) -> list[Table]:
    settings = bench.settings
    tables = []
    for which, size, times in (("small", SMALL, settings.small_times),
                               ("medium", MEDIUM, settings.medium_times),
                               ("large", settings.large, 1)):
        for kind in ("tcp", "socketpair"):
            tables.append(throughput_table(bench, which, size, times, kind))
    tables += [http_table(bench, SMALL), http_table(bench, MEDIUM)]
    tables += [cost_table(bench, "tcp"), cost_table(bench, "socketpair")]
    tables += [read_loop_table(bench, "pipe"), read_loop_table(bench, "file")]
    return tables


# -- running the rounds ---------------------------------------------------------------------

class Progress:
    """Where the run is, on stderr: one line rewritten on a terminal, plain lines elsewhere."""

    def __init__(self, stream: TextIO, rounds: int) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._start = time.perf_counter()
        self._rounds = rounds
        self._round_started = self._start
        self._round_seconds: list[float] = []
        self.round = 0
        self._shown = False

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def start_round(self, number: int) -> None:
        """Round *number* begins; 0 when the rounds are over."""
        now = time.perf_counter()
        if self.round:
            self._round_seconds.append(now - self._round_started)
        self.round = number
        self._round_started = now

    def _prefix(self) -> str:
        text = f"fastwrap bench [{self.elapsed():4.0f} s]"
        if self.round:
            text += f" round {self.round}/{self._rounds}"
            if self._round_seconds:
                left = (self._rounds - self.round + 1) * statistics.mean(self._round_seconds)
                left -= time.perf_counter() - self._round_started
                text += f", about {max(left, 0):.0f} s left"
        return text

    def note(self, text: str) -> None:
        """A milestone: a line of its own where the line cannot be rewritten."""
        if self._tty:
            self.status(text)
        else:
            print(f"{self._prefix()}: {text}", file=self._stream, flush=True)

    def status(self, text: str) -> None:
        """Where it is right now; shown only on a terminal."""
        if not self._tty:
            return
        width = max(shutil.get_terminal_size().columns - 1, 20)
        line = f"{self._prefix()}: {text}"[:width]
        self._stream.write("\r" + line + "\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def rotated(items: list[Contender], by: int) -> list[Contender]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def take_sample(table: Table, contender: Contender, round_number: int, keep: bool) -> None:
    """Measure *contender* once; a failure is recorded and ends its part in the run."""
    assert contender.measure is not None
    try:
        sample = contender.measure(not keep)
    except Exception as exc:  # recorded and shown: one broken contender spoils no other
        contender.failed = f"{type(exc).__name__}: {exc}"
        return
    if keep:
        contender.rounds.append({"round": float(round_number), **sample.values})
        for path, count in sample.paths.items():
            contender.paths[path] = contender.paths.get(path, 0) + count


def run_rounds(tables: list[Table], rounds: int, progress: Progress) -> None:
    """Warm up, then every round: each table, each live contender in rotated order."""
    progress.note("warming up")
    for table in tables:
        if table.warmup:
            for contender in [c for c in table.contenders if c.live]:
                progress.status(f"warming up: {table.key}: {contender.name}")
                take_sample(table, contender, 0, keep=False)
    for number in range(1, rounds + 1):
        progress.start_round(number)
        section = ""
        for table in tables:
            if table.section != section:
                section = table.section
                progress.note(SECTIONS[section])
            for contender in rotated([c for c in table.contenders if c.live], number - 1):
                progress.status(f"{table.key}: {contender.name}")
                take_sample(table, contender, number, keep=True)
    progress.start_round(0)


# -- summing up -------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(fastwrap_median: float, baseline_median: float, higher_is_better: bool) -> float:
    """Above 1 when fastwrap does better, whichever way the metric points."""
    if higher_is_better:
        return fastwrap_median / baseline_median
    return baseline_median / fastwrap_median


def derive_overhead(table: Table) -> None:
    """Per round: each contender's time per transmission less the reference's."""
    if table.reference is None:
        return
    reference = table.contender(table.reference)
    base = {entry["round"]: entry[MICROS.key] for entry in reference.rounds}
    overheads: dict[str, list[dict[str, float]]] = {}
    for contender in table.contenders:
        if contender.name == reference.name or not contender.rounds:
            continue
        rows = [{"round": entry["round"], "value": entry[MICROS.key] - base[entry["round"]]}
                for entry in contender.rounds if entry["round"] in base]
        if rows:
            overheads[contender.name] = rows
    table.derived[OVERHEAD.key] = overheads


def metric_values(table: Table, name: str, metric: Metric) -> list[float]:
    if metric.key in table.derived:
        return [row["value"] for row in table.derived[metric.key].get(name, [])]
    return table.contender(name).values(metric.key)


def table_ratios(table: Table) -> list[dict[str, Any]]:
    """Every pair's ratio for every metric where both medians exist (and are above 0)."""
    found = []
    metrics = list(table.metrics) + [m for m in (OVERHEAD,) if m.key in table.derived]
    for name, baseline in table.pairs:
        for metric in metrics:
            mine = metric_values(table, name, metric)
            theirs = metric_values(table, baseline, metric)
            if not mine or not theirs:
                continue
            a, b = statistics.median(mine), statistics.median(theirs)
            if a <= 0 or b <= 0:
                continue  # an overhead lost in the noise has no meaningful ratio
            found.append({"contender": name, "baseline": baseline, "metric": metric.key,
                          "higher_is_better": metric.higher_is_better,
                          "value": ratio(a, b, metric.higher_is_better)})
    return found


def report(tables: list[Table], settings: Settings, described: dict[str, Any],
           seconds: float) -> dict[str, Any]:
    """Everything measured, as the --json file holds it."""
    out_tables = []
    for table in tables:
        derive_overhead(table)
        contenders = []
        for c in table.contenders:
            entry: dict[str, Any] = {
                "name": c.name, "role": c.role, "engine": c.engine, "path": c.path,
                "skipped": c.skipped, "failed": c.failed, "paths_taken": c.paths,
                "rounds": [dict(r, round=int(r["round"])) for r in c.rounds]}
            if c.rounds:
                entry["summary"] = {m.key: summary(c.values(m.key)) for m in table.metrics}
            contenders.append(entry)
        derived = {key: {name: {"rounds": [dict(r, round=int(r["round"])) for r in rows],
                                **summary([r["value"] for r in rows])}
                         for name, rows in per_name.items()}
                   for key, per_name in table.derived.items()}
        out_tables.append({
            "key": table.key, "section": table.section, "section_title": SECTIONS[table.section],
            "title": table.title, "notes": list(table.notes),
            "metrics": [{"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}
                        for m in table.metrics],
            "contenders": contenders, "derived": derived, "ratios": table_ratios(table)})
    return {
        "machine": described,
        "settings": {"rounds": settings.rounds, "quick": settings.quick,
                     "large_bytes": settings.large, "small_times": settings.small_times,
                     "medium_times": settings.medium_times, "cost_times": settings.cost_times,
                     "http_seconds": settings.http_seconds, "clients": settings.clients},
        "ratio_meaning": "fastwrap's median over the baseline's for higher-is-better metrics, "
                         "the baseline's over fastwrap's otherwise: above 1, fastwrap does better",
        "seconds": seconds,
        "tables": out_tables,
    }


# -- the text table ------------------------------------------------------------------------------

def fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.2g}" if magnitude < 0.01 else f"{value:.3f}"


def spread(values: Sequence[float]) -> str:
    s = summary(values)
    return f"{fmt(s['median'])} [{fmt(s['min'])}..{fmt(s['max'])}]"


def render_rows(rows: list[list[str]], indent: str) -> list[str]:
    """Columns padded to their widest cell: the first to the left, the others to the right."""
    def wide(row: list[str]) -> bool:  # a skipped or failed row: one cell for the rest
        return len(row) == 2 and len(rows[0]) > 2

    widths = [max(len(row[i]) for row in rows if i == 0 or not wide(row))
              for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        if wide(row):
            lines.append(indent + row[0].ljust(widths[0]) + "  " + row[1])
            continue
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def render_table(table: Table, ratios: list[dict[str, Any]]) -> list[str]:
    columns = list(table.metrics) + ([OVERHEAD] if OVERHEAD.key in table.derived else [])
    baselines = list(dict.fromkeys(b for _n, b in table.pairs))
    ratio_columns = [(b, m) for m in table.shown for b in baselines]
    header = ["contender"] + [m.label for m in columns] + [
        f"x {table.contender(b).short}" + (f" {m.tag}" if m.tag else "")
        for b, m in ratio_columns]
    rows = [header]
    lookup = {(r["contender"], r["baseline"], r["metric"]): r["value"] for r in ratios}
    for c in table.contenders:
        label = c.name
        if c.paths and c.path is None:
            label += " [" + ", ".join(sorted(c.paths)) + "]"
        if c.skipped:
            rows.append([label, f"skipped: {c.skipped}"])
            continue
        if c.failed and not c.rounds:
            rows.append([label, f"FAILED: {c.failed}"])
            continue
        row = [label]
        for metric in columns:
            values = metric_values(table, c.name, metric)
            row.append(spread(values) if values else "-")
        for baseline, metric in ratio_columns:
            value = lookup.get((c.name, baseline, metric.key))
            row.append(f"{value:.2f}" if value is not None else "")
        rows.append(row)
        if c.failed:
            rows.append(["", f"FAILED in a later round: {c.failed}"])
    lines = [f"  {table.title}"] + [f"    {note}" for note in table.notes]
    return lines + render_rows(rows, "    ")


def render(tables: list[Table], data: dict[str, Any]) -> str:
    m = data["machine"]
    settings = data["settings"]
    lines = [
        f"fastwrap bench: fastwrap {m['fastwrap_version']} ({m['implementation']} engine by "
        f"default), {m['python']}, {m['system']} {m['kernel']} {m['machine']}, "
        f"{m['cpu_count']} CPUs, {m['date']}",
        f"{settings['rounds']} interleaved rounds; each figure: median [min..max] over them.",
        "x baseline: fastwrap's median over the baseline's, turned so that above 1 means "
        "fastwrap does better.",
    ]
    section = ""
    for table, out in zip(tables, data["tables"]):
        if table.section != section:
            section = table.section
            lines += ["", SECTIONS[section]] + [f"  {note}" for note in SECTION_NOTES[section]]
        lines += render_table(table, out["ratios"])
    lines += ["", f"took {data['seconds']:.0f} s"]
    return "\n".join(lines)


# -- the plot ------------------------------------------------------------------------------------

def matplotlib_problem() -> Optional[str]:
    """Why --plot cannot work here, or None."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        return f"--plot needs matplotlib ({exc}): pip install matplotlib"
    return None


def _plot_label(contender: dict[str, Any]) -> str:
    paths = contender["paths_taken"]
    if paths and contender["path"] is None:
        return f"{contender['name']} [{', '.join(sorted(paths))}]"
    return str(contender["name"])


def plot(data: dict[str, Any], path: str) -> None:
    """One panel per table: the first metric's medians as bars, min-max as error bars."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    tables = [t for t in data["tables"] if any(c["rounds"] for c in t["contenders"])]
    columns = 2
    rows = -(-len(tables) // columns)
    # Each row of panels as tall as its longest list of bars.
    bars = [len([c for c in t["contenders"] if c["rounds"]]) for t in tables]
    heights = [max(bars[i:i + columns]) + 2 for i in range(0, len(tables), columns)]
    figure, axes = plt.subplots(rows, columns, figsize=(16, 0.3 * sum(heights) + 1),
                                squeeze=False, gridspec_kw={"height_ratios": heights})
    colours = {"cython": "tab:blue", "python": "tab:orange"}
    for axis, table in zip(axes.flat, tables):
        metric = table["metrics"][0]
        shown = [c for c in table["contenders"] if c["rounds"]]
        values = [[r[metric["key"]] for r in c["rounds"]] for c in shown]
        medians = [statistics.median(v) for v in values]
        errors = [[m - min(v) for m, v in zip(medians, values)],
                  [max(v) - m for m, v in zip(medians, values)]]
        colour = [colours.get(c["engine"] or "", "tab:blue" if c["role"] == FASTWRAP else "grey")
                  for c in shown]
        positions = list(range(len(shown)))
        axis.barh(positions, medians, xerr=errors, color=colour, capsize=2)
        axis.set_yticks(positions)
        axis.set_yticklabels([_plot_label(c) for c in shown], fontsize=7)
        axis.invert_yaxis()
        axis.set_xlabel(metric["label"] + (" (higher is better)" if metric["higher_is_better"]
                                           else " (lower is better)"), fontsize=8)
        axis.set_title(f"{table['section']}) {table['title']}", fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
    for axis in list(axes.flat)[len(tables):]:
        axis.set_visible(False)
    m = data["machine"]
    figure.suptitle(f"fastwrap {m['fastwrap_version']} bench: {m['python']}, {m['system']} "
                    f"{m['kernel']}, {m['cpu_count']} CPUs, {m['date']} "
                    f"(median, min-max over {data['settings']['rounds']} rounds)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the run --------------------------------------------------------------------------------------

def check_output(path: Optional[str], option: str) -> Optional[str]:
    """Why *path* cannot be written, found before the run rather than after it."""
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{option}: no directory {directory}"
    if not os.access(directory, os.W_OK):
        return f"{option}: cannot write into {directory}"
    return None


def problems_before_start(args: argparse.Namespace) -> Optional[tuple[int, str]]:
    """(exit status, message) when the run cannot even start."""
    for path, option in ((args.json, "--json"), (args.plot, "--plot")):
        problem = check_output(path, option)
        if problem:
            return EXIT_USAGE, problem
    if args.plot:
        problem = matplotlib_problem()
        if problem:
            return EXIT_USAGE, problem
    if not hasattr(socket, "send_fds") or not hasattr(socket, "AF_UNIX"):
        return 1, "needs a POSIX system with socket.send_fds (Python 3.9+)"
    return None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A terminated bench cleans up as an interrupted one does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def close_mapping(memory: mmap.mmap) -> None:
    """Unmap, unless an interrupted transmission still holds a view of it (exit unmaps)."""
    with contextlib.suppress(BufferError):
        memory.close()


def prepare(stack: contextlib.ExitStack, settings: Settings, progress: Progress) -> Bench:
    """Files, helper processes, servers: everything, each registered for cleanup."""
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastwrap-bench-"))
    root = os.path.join(workdir, "www")
    os.mkdir(root)
    need = settings.large + MEDIUM + SMALL
    free = shutil.disk_usage(workdir).free
    if free < need + 64 * MIB:
        raise BenchError(f"{free // MIB} MiB free in {tempfile.gettempdir()}, the files need "
                         f"{need // MIB + 64} MiB: try a smaller --size-mib, or set TMPDIR")
    children = Children(workdir)
    stack.callback(children.stop)
    progress.note("starting the servers and helpers")
    servers = start_servers(children, root)
    drain = Helper(children, "drain", "drain")
    feeder = Helper(children, "feed", "feed")
    clients = [Helper(children, "client", f"client-{n}") for n in range(settings.clients)]
    for helper in [drain, feeder, *clients]:
        stack.callback(helper.close)
    progress.note(f"writing the files ({_size_label(settings.large)} the largest)")
    files = {}
    names = {SMALL: "small.bin", MEDIUM: "medium.bin", settings.large: "large.bin"}
    for size, name in names.items():
        files[size] = os.path.join(root, name)
        write_file(files[size], size)
        warm(files[size])
    opened: dict[int, BinaryIO] = {
        size: stack.enter_context(open(path, "rb")) for size, path in files.items()}
    mapped = {size: mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
              for size, f in opened.items()}
    for memory in mapped.values():
        stack.callback(close_mapping, memory)
    tls, tls_skip = make_certificate(workdir)
    links = Links(drain, tls)
    stack.callback(links.close)
    errors = {}
    for server in servers:
        try:
            wait_until_listening(server)
        except BenchError as exc:
            errors[server.name] = str(exc)
    return Bench(settings, files, opened, mapped, links, feeder, clients, servers,
                 errors, tls_skip, engines())


def measure_all(settings: Settings, progress: Progress) -> tuple[list[Table], dict[str, Any]]:
    """Prepare, run the rounds, clean up; the tables and what --json writes."""
    described = machine()  # dated when the run starts
    with contextlib.ExitStack() as stack:
        bench = prepare(stack, settings, progress)
        tables = build_tables(bench)
        run_rounds(tables, settings.rounds, progress)
        progress.note("stopping the servers and helpers")
    data = report(tables, settings, described, progress.elapsed())
    return tables, data


def run(args: argparse.Namespace) -> int:
    """``fastwrap bench``: 0 when every contender ran, 1 when one failed, 130 on Ctrl-C."""
    problem = problems_before_start(args)
    if problem:
        print(f"fastwrap bench: {problem[1]}", file=sys.stderr)
        return problem[0]
    settings = Settings.from_args(args)
    progress = Progress(sys.stderr, settings.rounds)
    try:
        with sigterm_as_interrupt():
            tables, data = measure_all(settings, progress)
    except KeyboardInterrupt:
        progress.clear()
        print("fastwrap bench: interrupted; the servers, helpers and files are gone",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BenchError as exc:
        progress.clear()
        print(f"fastwrap bench: {exc}", file=sys.stderr)
        return 1
    progress.clear()
    print(render(tables, data), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    if args.plot:
        plot(data, args.plot)
    failures = [f"{t.key}: {c.name}: {c.failed}" for t in tables for c in t.contenders if c.failed]
    for failure in failures:
        print(f"fastwrap bench: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0
