"""The event loop behind ``fastwrap serve``: each connection a socket the loop watches.

No thread, no transport and no stream per connection: the loop calls back
when a socket is readable, the request head is parsed from the bytes
received, answered by :class:`fastwrap.static.StaticFiles`'s rules, and the
response goes out by a :class:`fastwrap.Transmission` stepped right there.
Most responses end in that step; only one that has to wait (a full socket
buffer, a cold file) is handed to :func:`fastwrap.asyncio.drive`.  Heads
without a body leave in one write, with TCP_NODELAY set, so that no
response waits for Nagle's algorithm to meet the client's delayed ACK.

Deadlines (the head, idle keep-alive, send progress, a lingering close) are
checked by one periodic sweep over the connections, not one timer each.
"""
from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Set, Tuple

import fastwrap
import fastwrap.asyncio

from .. import serving, static
from .._paths import log
from .._request import BadRequest, parse_head
from .cache import HeadCache
from .config import Config

__all__ = ["Server", "loop_name"]

#: The Server header of every response.
SERVER_SOFTWARE = f"fastwrap/{fastwrap.__version__}"

_RECV_SIZE = 65536
#: Connections accepted per readable event of the listening socket, so that a
#: burst of them does not hold up the ones already served.
_ACCEPT_BATCH = 64
#: Steps of a transmission taken at once before it is handed to the loop.
_STEPS = 4
#: Seconds a connection closed after an error keeps reading (and dropping) what
#: the client still sends, so that the close is not a reset that destroys the
#: answer before the client reads it.
_LINGER = 2.0
#: Descriptors kept for what is not a connection (files being sent, logs, the pool).
_SPARE_FDS = 64
#: Errors of accept() that say the process or system is out of something:
#: stop accepting for a sweep, let the backlog hold the clients.
_SCARCE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

READING, SENDING, WRITING, LINGERING, CLOSED = range(5)

_CONTROL = {i: f"\\x{i:02x}" for i in list(range(0x20)) + [0x7f]}
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class _Clock:
    """The Date header and the access log's date, formatted once a second."""

    __slots__ = ("second", "http", "log")

    def __init__(self) -> None:
        self.second = -1
        self.http = b""
        self.log = ""

    def tick(self) -> None:
        now = int(time.time())
        if now != self.second:
            self.second = now
            g = time.gmtime(now)
            self.http = (f"{_DAYS[g.tm_wday]}, {g.tm_mday:02d} {_MONTHS[g.tm_mon]} "
                         f"{g.tm_year} {g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT"
                         ).encode("ascii")
            t = time.localtime(now)
            # http.server's log_date_time_string, as the threaded server logged.
            self.log = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon]}/{t.tm_year:04d} "
                        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")


def loop_name(choice: str = "auto") -> str:
    """The loop a server configured with *choice* runs on: ``"uvloop"`` or ``"asyncio"``."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("uvloop is not installed: pip install 'fastwrap[serve]', "
                               "or choose the asyncio loop") from None
        return "asyncio"
    return "uvloop"


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def raise_file_limit() -> int:
    """Raise the soft limit of open descriptors to the hard one; return the soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # what Linux's nr_open allows by default
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError):
        return soft


class Server:
    """Serves *config.root* on a listening socket, on one event loop (see the module).

    ``Server(config).run(sock)`` serves until :meth:`stop`; several processes
    may each run one on the same socket.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.files = static.StaticFiles(config.root, follow_symlinks=config.follow_symlinks)
        self.cache = HeadCache(config.cache_entries, SERVER_SOFTWARE)
        #: ``"uvloop"`` or ``"asyncio"``: what :meth:`run` runs on.
        self.loop_name = loop_name(config.loop)
        #: The signal that began the stop, if one did.
        self.signalled: Optional[int] = None
        self.connections: Set[Connection] = set()
        self.clock = _Clock()
        self.stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._listener: Optional[socket.socket] = None
        self._accepting = False
        self._done: Optional["asyncio.Future[None]"] = None
        self._requested = 0  # 1: stop gracefully, 2: at once (before the loop ran)
        self._lock = threading.Lock()
        self._max_connections = config.max_connections
        self._short = False  # accept() ran out of descriptors or memory
        self._sweep_every = max(0.05, min(1.0, config.head_timeout / 4,
                                          config.idle_timeout / 4, config.send_timeout / 4))
        self._log_fd = 2

    # -- running and stopping -----------------------------------------------------------

    def run(self, sock: socket.socket) -> None:
        """Serve on *sock* (bound and listening) until stopped; the caller closes *sock*.

        In the main thread, SIGTERM and SIGINT begin a graceful stop, and a
        second SIGINT stops at once.
        """
        limit = raise_file_limit()
        spare = min(_SPARE_FDS, limit // 4)
        self._max_connections = max(1, min(self.config.max_connections, limit - spare))
        serving.set_fetch_threads(self.config.threads)
        try:
            self._log_fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            self._log_fd = 2
        loop = _new_loop(self.loop_name)
        try:
            loop.run_until_complete(self._serve(sock))
        finally:
            loop.close()
            self._loop = None

    def stop(self) -> None:
        """Begin a graceful stop: see :attr:`Config.grace`.  Thread- and signal-safe."""
        self._request(1)

    def stop_now(self) -> None:
        """Close every connection and return from :meth:`run` at once."""
        self._request(2)

    def _request(self, how: int) -> None:
        with self._lock:
            self._requested = max(self._requested, how)
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._stop_now if how == 2 else self._begin_stop)
            except RuntimeError:
                pass  # the loop has closed: run() has returned

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        sock.setblocking(False)
        self._listener = sock
        with self._lock:
            self._loop = loop
            requested = self._requested
        handled = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
                handled.append(signum)
        self.clock.tick()
        self._resume_accepting()
        sweeper = loop.call_later(self._sweep_every, self._sweep)
        if requested:
            self._stop_now() if requested == 2 else self._begin_stop()
        try:
            await self._done
        finally:
            sweeper.cancel()
            self._pause_accepting()
            for signum in handled:
                loop.remove_signal_handler(signum)
            with self._lock:
                self._loop = None

    def _on_signal(self, signum: int) -> None:
        if self.signalled is None:
            self.signalled = signum
            self._begin_stop()
        elif signum == signal.SIGINT:
            self._stop_now()

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._stop_listening()
        for connection in list(self.connections):
            if connection.state in (READING, LINGERING):
                connection.close()
        assert self._loop is not None
        self._loop.call_later(self.config.grace, self._stop_now)
        self._check_done()

    def _stop_now(self) -> None:
        self.stopping = True
        self._stop_listening()
        for connection in list(self.connections):
            connection.close()
        self._check_done()

    def _check_done(self) -> None:
        if self.stopping and not self.connections and self._done is not None \
                and not self._done.done():
            self._done.set_result(None)

    # -- connections ----------------------------------------------------------------------

    def _resume_accepting(self) -> None:
        if not self._accepting and not self.stopping and self._listener is not None \
                and len(self.connections) < self._max_connections:
            assert self._loop is not None
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting and self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
        self._accepting = False

    def _stop_listening(self) -> None:
        """Close the listener: new connections are refused, not queued for no one.

        A listener left open while the responses in flight finish would take
        connections into its backlog that nobody accepts, to reset them at
        exit; with SO_REUSEPORT (several workers) the kernel would keep
        sending new connections there rather than to the workers still serving.
        """
        self._pause_accepting()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(_ACCEPT_BATCH):
            if len(self.connections) >= self._max_connections:
                # The kernel's backlog holds the next ones until a connection ends.
                self._pause_accepting()
                return
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _SCARCE:
                    # Out of descriptors or memory: the backlog waits for the next sweep.
                    if not self._short:
                        log.warning("fastwrap serve: cannot accept a connection (%s); new "
                                    "clients wait until some end (raise the descriptor limit, "
                                    "ulimit -n, or lower --max-connections)", exc.strerror)
                    self._short = True
                    self._pause_accepting()
                    return
                continue  # ECONNABORTED and the like: that client is gone
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            self._short = False
            host = address[0] if isinstance(address, tuple) else "-"
            self.connections.add(Connection(self, sock, str(host)))

    def forget(self, connection: "Connection") -> None:
        self.connections.discard(connection)
        self._resume_accepting()
        self._check_done()

    def _sweep(self) -> None:
        """Close what ran out of time; resume accepting after a shortage."""
        loop = self._loop
        if loop is None:
            return
        self.clock.tick()
        now = time.monotonic()
        config = self.config
        for connection in list(self.connections):
            connection.check(now, config)
        self._resume_accepting()
        loop.call_later(self._sweep_every, self._sweep)

    # -- the access log -------------------------------------------------------------------

    def log(self, client: str, requestline: str, status: int, size: "int | str",
            path: str) -> None:
        """One access-log line, in one write (processes share stderr)."""
        if self.config.quiet:
            return
        line = (f'{client} - - [{self.clock.log}] "{requestline.translate(_CONTROL)}" '
                f"{status} {size} {path}\n")
        try:
            os.write(self._log_fd, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # stderr closed: serving goes on without a log


class Connection:
    """One client's socket, its received bytes, and the response in progress."""

    __slots__ = ("server", "loop", "sock", "fd", "client", "buffer", "state", "since",
                 "keep_alive", "linger", "requestline", "tx", "file", "task", "status",
                 "count", "out", "head_size", "progress")

    def __init__(self, server: Server, sock: socket.socket, client: str) -> None:
        assert server._loop is not None
        self.server = server
        self.loop = server._loop
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.buffer = bytearray()
        self.state = READING
        self.since = time.monotonic()  # when the current wait began
        self.keep_alive = False
        self.linger = False  # unread request bytes may remain: close politely
        self.requestline = ""
        self.tx: Any = None
        self.file: Any = None
        self.task: Optional["asyncio.Task[int]"] = None
        self.status = 0
        self.count = 0
        self.out: Optional[memoryview] = None
        self.head_size = 0
        self.progress = 0
        self.loop.add_reader(self.fd, self.on_readable)

    # -- receiving ------------------------------------------------------------------------

    def on_readable(self) -> None:
        try:
            self._on_readable()
        except Exception:
            self.fail()

    def fail(self) -> None:
        """A bug or a failure of the system in a callback: log it, close this connection only."""
        log.exception("fastwrap serve: closing the connection of %s after an error "
                      "serving %r", self.client, self.requestline)
        if self.task is not None:
            # The transmission may be in a fetch thread: its callback closes it after.
            self.keep_alive = False
            self.task.cancel()
            return
        if self.tx is not None:
            self.tx.close()
        if self.file is not None:
            self.file.close()
        self.tx = self.file = None
        if self.state == SENDING:
            self.state = WRITING  # close() then removes what is registered
        self.close()

    def _on_readable(self) -> None:
        data = self.receive()
        if data is None:
            return
        if self.state == LINGERING:
            if not data:
                self.close()
            return
        if not data:
            self.ended()
            return
        if not self.buffer:
            self.since = time.monotonic()  # a request head begins
        self.buffer += data
        self.serve_buffer()
        if self.state == READING and self.buffer and len(data) < _RECV_SIZE:
            # Part of a head: read on to EAGAIN, so that a reset that came
            # with those bytes is seen now (uvloop drops a readable event that
            # carries an error, and the connection would wait for the sweep).
            more = self.receive()
            if more == b"":
                self.ended()
            elif more:
                self.buffer += more
                self.serve_buffer()

    def receive(self) -> Optional[bytes]:
        """What the socket holds: b"" at its end or on a reset, None if nothing yet."""
        try:
            return self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""  # a reset: the same as an end for what was not yet a request

    def serve_buffer(self) -> None:
        """Answer every whole request in the buffer, until one must wait."""
        max_head = self.server.config.max_head
        while self.state == READING and self.buffer:
            try:
                head = parse_head(self.buffer, max_head)
            except BadRequest as exc:
                self.refuse(exc.status)
                return
            if head is None:
                return
            consumed, method, target, version, fields = head
            self.requestline = _first_line(self.buffer)
            del self.buffer[:consumed]
            self.respond(method, target, version, fields)

    def ended(self) -> None:
        """The client closed its side: a request cut short gets 400, else nothing."""
        if self.buffer.strip(b"\r\n"):
            self.keep_alive = False
            self.refuse(400)
        else:
            self.close()

    # -- answering ------------------------------------------------------------------------

    def respond(self, method: str, target: str, version: Tuple[int, int],
                fields: List[Tuple[str, str]]) -> None:
        server = self.server
        first: dict[str, str] = {}
        for name, value in fields:
            first.setdefault(name, value)
        connection = first.get("connection", "").lower()
        keep = connection == "keep-alive" or (version >= (1, 1) and connection != "close")
        if first.get("content-length") not in (None, "", "0") or "transfer-encoding" in first:
            # A request body is not read: it would be taken for the next request.
            keep = False
            self.linger = True
        if server.stopping:
            keep = False
        self.keep_alive = keep
        ending = (b"" if keep and version >= (1, 1) else
                  b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
        if target.startswith("//"):
            # As http.server does (gh-87389): "//host" would read as an authority.
            target = "/" + target.lstrip("/")
        server.clock.tick()
        if method in ("GET", "HEAD"):
            key = target.partition("?")[0]
            hit = server.cache.lookup(key, method == "GET")
            if hit is not None:
                entry, f = hit
                if ("if-none-match" in first or "if-modified-since" in first
                        or "range" in first):
                    answer = static.file_answer(static.Request.from_target(method, target, first),
                                                entry.info)
                    if answer.status in (200, 206) and f is not None:
                        if answer.start:
                            f.seek(answer.start)
                        answer.file = f
                    elif f is not None:
                        f.close()
                    self.send_answer(method, answer, ending)
                    return
                head = (b"HTTP/1.1 200 OK\r\nDate: " + server.clock.http + entry.tail + ending
                        + b"\r\n")
                if f is None:
                    self.send_bytes(200, head, 0)
                else:
                    self.send_file(200, f, head, entry.info.size)
                return
        answer = server.files.answer(static.Request.from_target(method, target, first))
        if answer.info is not None and answer.named and method in ("GET", "HEAD"):
            server.cache.store(target.partition("?")[0], answer.named, answer.info)
        self.send_answer(method, answer, ending)

    def send_answer(self, method: str, answer: static.Answer, ending: bytes) -> None:
        head = self.head(answer.status_line, answer.headers, ending)
        allowed = serving.body_allowed(method, answer.status)
        if answer.file is not None:
            if allowed:
                self.send_file(answer.status, answer.file, head, answer.length)
                return
            answer.file.close()
        body = answer.body if allowed else b""
        self.send_bytes(answer.status, head + body, len(body))

    def head(self, status_line: str, headers: List[Tuple[str, str]], ending: bytes) -> bytes:
        return (b"HTTP/1.1 " + status_line.encode("latin-1") + b"\r\nDate: "
                + self.server.clock.http + b"\r\nServer: " + _SERVER + b"\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
                + ending + b"\r\n")

    def refuse(self, status: int) -> None:
        """Answer a request that cannot be served with *status*, and close."""
        self.requestline = _first_line(self.buffer)
        self.keep_alive = False
        self.linger = True
        answer = static.error_answer(status)
        self.server.clock.tick()
        head = self.head(answer.status_line, answer.headers, b"Connection: close\r\n")
        self.buffer.clear()
        self.send_bytes(status, head + answer.body, len(answer.body))

    # -- sending --------------------------------------------------------------------------

    def send_bytes(self, status: int, data: bytes, body: int) -> None:
        """Send a generated response (a head, and maybe a small body) in one write."""
        self.status, self.count, self.head_size = status, body, len(data) - body
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.server.log(self.client, self.requestline, status, 0, "-")
            self.close()
            return
        if sent == len(data):
            self.server.log(self.client, self.requestline, status, body, "-")
            self.finished()
            return
        # Rare: the client's window is full; the rest leaves when it is writable.
        self.out = memoryview(data)[sent:]
        self.progress = sent
        self.wait(WRITING)
        self.loop.add_writer(self.fd, self.on_writable)

    def on_writable(self) -> None:
        try:
            self._on_writable()
        except Exception:
            self.fail()

    def _on_writable(self) -> None:
        out = self.out
        assert out is not None
        try:
            sent = self.sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.loop.remove_writer(self.fd)
            self.server.log(self.client, self.requestline, self.status,
                            max(self.progress - self.head_size, 0), "-")
            self.close()
            return
        self.progress += sent
        self.since = time.monotonic()
        self.out = out[sent:]
        if not self.out:
            self.out = None
            self.loop.remove_writer(self.fd)
            self.server.log(self.client, self.requestline, self.status, self.count, "-")
            self.resume()

    def send_file(self, status: int, f: Any, head: bytes, count: int) -> None:
        """Send *head* and *count* bytes of *f* from its position through the engine."""
        try:
            tx = fastwrap.Transmission(f, self.sock, count, head, nowait=True)
        except Exception as exc:
            # Nothing is on the wire yet: the client learns it from a 500.
            f.close()
            log.warning("fastwrap serve: %r cannot be sent: %s", self.requestline, exc)
            self.keep_alive = False
            answer = static.error_answer(500)
            self.send_bytes(500, self.head(answer.status_line, answer.headers,
                                           b"Connection: close\r\n") + answer.body,
                            len(answer.body))
            return
        self.status, self.count = status, count
        failed = False
        try:
            for _ in range(_STEPS):
                try:
                    tx.send()
                except BlockingIOError:
                    pass
                if tx.done or tx.waiting is not None:
                    break
        except OSError:
            failed = True  # the client went away, or the file could not be read
        except Exception:
            log.exception("fastwrap serve: sending %r failed", self.requestline)
            failed = True
        if failed or tx.done:
            self.sent(tx, f, failed)
            return
        # It has to wait: the loop drives it from here.
        self.tx, self.file = tx, f
        self.progress = tx.sent
        self.wait(SENDING)
        self.task = self.loop.create_task(fastwrap.asyncio.drive(tx))
        self.task.add_done_callback(self._driven)

    def _driven(self, task: "asyncio.Task[int]") -> None:
        if task is not self.task:
            return  # given up on by fail()
        self.task = None
        failed = task.cancelled() or task.exception() is not None
        if not task.cancelled():
            error = task.exception()
            if error is not None and not isinstance(error, OSError):
                log.error("fastwrap serve: sending %r failed", self.requestline,
                          exc_info=error)
        tx, f = self.tx, self.file
        self.tx = self.file = None
        try:
            self.sent(tx, f, failed)
            if self.state == SENDING:
                self.resume()
        except Exception:
            self.fail()

    def sent(self, tx: Any, f: Any, failed: bool) -> None:
        """A file response has ended: log it, and close if it came up short."""
        sent, path = tx.sent, tx.path
        try:
            tx.close()
        finally:
            f.close()
        self.server.log(self.client, self.requestline, self.status, sent, path)
        if sent < self.count and not failed:
            serving.report_short(serving.Framing(True, self.count, None, self.count), sent,
                                 self.requestline)
        if failed or sent < self.count:
            self.keep_alive = False
            self.linger = False
            self.close()
        elif self.state == READING:
            self.finished()

    # -- states ---------------------------------------------------------------------------

    def wait(self, state: int) -> None:
        """Stop reading while a response waits to go out."""
        if self.state == READING:
            self.loop.remove_reader(self.fd)
        self.state = state
        self.since = time.monotonic()

    def finished(self) -> None:
        """A response went out within the call that began it."""
        if not self.keep_alive:
            self.close_politely()
        else:
            self.since = time.monotonic()

    def resume(self) -> None:
        """A response that waited has gone out: read the next request, or close."""
        if not self.keep_alive or self.server.stopping:
            self.close_politely()
            return
        self.state = READING
        self.since = time.monotonic()
        self.loop.add_reader(self.fd, self.on_readable)
        self.serve_buffer()

    def close_politely(self) -> None:
        """Close after a final response; keep draining what a client still sends for a while."""
        if self.state == CLOSED:
            return
        if not self.linger:
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        if self.state != READING:
            self.loop.add_reader(self.fd, self.on_readable)
        self.state = LINGERING
        self.buffer.clear()
        self.since = time.monotonic()

    def check(self, now: float, config: Config) -> None:
        """The sweep: end this connection if its current wait has lasted too long."""
        state = self.state
        waited = now - self.since
        if state == READING:
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.ended()  # reset while waiting (an event uvloop does not deliver)
            elif self.buffer:
                if waited > config.head_timeout:
                    self.refuse(408)
            elif waited > config.idle_timeout:
                self.close()
        elif state == SENDING:
            sent = self.tx.sent if self.tx is not None else self.progress
            if sent != self.progress:
                self.progress, self.since = sent, now
            elif waited > config.send_timeout:
                self.close()
        elif state == WRITING:
            if waited > config.send_timeout:
                self.loop.remove_writer(self.fd)
                self.server.log(self.client, self.requestline, self.status,
                                max(self.progress - self.head_size, 0), "-")
                self.close()
        elif state == LINGERING and waited > _LINGER:
            self.close()

    def close(self) -> None:
        """Close now; a transmission in progress is cancelled (and logged) first."""
        if self.state == CLOSED:
            return
        if self.task is not None:
            # Its callback closes the rest once a disk read in progress has returned.
            self.keep_alive = False
            self.task.cancel()
            return
        if self.state in (READING, LINGERING):
            self.loop.remove_reader(self.fd)
        elif self.state == WRITING:
            self.loop.remove_writer(self.fd)
        self.state = CLOSED
        self.sock.close()
        self.server.forget(self)


_SERVER = SERVER_SOFTWARE.encode("latin-1")


def _first_line(buffer: "bytes | bytearray") -> str:
    """The request line at the start of *buffer* (what there is of it), for the log."""
    start = 0
    while start < len(buffer) and buffer[start] in (10, 13):
        start += 1
    end = buffer.find(b"\n", start)
    line = bytes(buffer[start:end if end >= 0 else start + 65536])
    return line.rstrip(b"\r\n").decode("latin-1")
