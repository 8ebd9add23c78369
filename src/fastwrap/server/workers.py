"""Several worker processes serving one port (``fastwrap serve --workers N``).

The parent binds first, so that a port in use or an address not of this host
is reported once, before any worker exists.  Then it forks the workers and
only watches them: it accepts nothing itself.

On Linux each worker listens on a socket of its own bound with
``SO_REUSEPORT`` to the same port, and the kernel spreads new connections
over the workers' listeners.  The parent keeps its own socket bound but never
listening: a socket that does not listen joins no reuseport group, so no
connection is ever queued where nobody accepts, and the port stays ours while
a worker is being replaced.  Elsewhere the parent listens and the workers all
accept on that one shared socket.

Stopping: every worker holds the read end of a pipe whose write end only
the parent has, and begins a graceful stop (``stop()``: no more accepting,
the responses in flight finish within the grace period) when the pipe
reaches end of file.  The parent closes it on SIGTERM or Ctrl-C and waits
for the workers; when the parent dies, even of SIGKILL, the kernel closes
it, so no worker outlives its parent by more than the grace period.  The
stop is not passed on as a signal: Ctrl-C at a terminal reaches the whole
process group, workers included, and a relayed signal would be a worker's
second, the one that means "at once".  A second Ctrl-C makes the parent
kill the workers and exit at once.  A worker that dies while serving is
replaced; one that keeps dying as it starts is given up on after a few
tries, with a one-line error.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Callable, Dict, List, Optional, Protocol, Set, Tuple, Union

from .config import Config

__all__ = ["REUSE_PORT", "bind", "cpu_count", "run", "supervise"]

#: Whether each worker gets a listener of its own (``SO_REUSEPORT``, Linux's
#: load-balancing kind; the BSDs' option of that name does not spread
#: connections), rather than all of them accepting on one shared socket.
REUSE_PORT: bool = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")

#: The listen backlog of each listener.
BACKLOG = 1024

#: A worker that dies sooner than this after it started counts as dying at start.
EARLY_DEATH = 1.0
#: After this many deaths at start in a row, the parent gives up.
EARLY_DEATHS_ALLOWED = 5
#: The first wait before replacing a worker that died at start; doubled each time.
FIRST_BACKOFF = 0.1
#: How long the parent waits, past the grace period, for workers to end on their own.
STOP_MARGIN = 2.0


def cpu_count() -> int:
    """The number of CPUs this process may run on (``--workers auto``)."""
    try:
        return len(os.sched_getaffinity(0))  # the cpuset of a container, not the host's
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _new_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":  # restart at once on a port with connections in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to *host*:*port*, not yet listening.

    With *reuse_port*, the socket has ``SO_REUSEPORT`` set, and other such
    sockets of this user may bind the same port.  Raises the ``OSError`` of
    ``bind(2)`` (or ``socket.gaierror`` for a name that does not resolve).
    """
    sock = _new_socket(host)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _claim(host: str, port: int) -> socket.socket:
    """The parent's socket: bound, listening only when the workers are to share it."""
    if not REUSE_PORT:
        sock = bind(host, port)
        sock.listen(BACKLOG)
        return sock
    # A plain bind first: a SO_REUSEPORT bind would succeed beside another
    # server's SO_REUSEPORT listener and silently share its port.  This one
    # fails on any socket bound there, and it resolves port 0 to a real port.
    with bind(host, port) as probe:
        port = probe.getsockname()[1]
    return bind(host, port, reuse_port=True)


def _listener(host: str, port: int) -> socket.socket:
    """A worker's own listener on the parent's port (Linux)."""
    sock = bind(host, port, reuse_port=True)
    try:
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class Serving(Protocol):
    """What a worker runs: a server with ``run(sock)`` and a thread-safe ``stop()``."""

    def run(self, sock: socket.socket) -> None:
        """Serve on the listening *sock* until stopped."""

    def stop(self) -> None:
        """Begin a graceful stop; safe from any thread, before or during run()."""


def _watch_parent(lifeline: int, server: Serving) -> None:
    """In a worker: stop *server* gracefully when the parent closes the pipe, or dies."""
    while True:
        try:
            if not os.read(lifeline, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    server.stop()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit status {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}"


_HANDLED = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD} if os.name == "posix" else set()


class _Supervisor:
    """The parent's side: the workers, their replacement and the stop."""

    def __init__(self, new_server: Callable[[], Serving], sock: socket.socket,
                 workers: int, grace: float, announce: Callable[[], None],
                 say: Callable[[str], None]) -> None:
        self.new_server = new_server
        self.sock = sock
        self.count = workers
        self.grace = grace
        self.announce = announce
        self.say = say
        self.workers: Dict[int, float] = {}  # pid: when it started
        self.ready = 0  # workers that reported listening (the first N announce the server)
        self.announced = False
        self.early_deaths = 0
        self.restart_at = 0.0
        self.signals: List[int] = []
        self.stopping = False
        self.deadline = 0.0
        # Whatever a worker writes on this pipe says it listens.
        self.ready_r, self.ready_w = os.pipe()
        # Only the parent holds the write end: it reaches end of file when the parent dies.
        self.lifeline_r, self.lifeline_w = os.pipe()
        self.wakeup_r, self.wakeup_w = os.pipe()
        for fd in (self.ready_r, self.wakeup_r, self.wakeup_w):
            os.set_blocking(fd, False)

    # -- the workers' side -----------------------------------------------------------------

    def _worker(self, mask: "Set[Union[int, signal.Signals]]") -> None:
        """In a freshly forked worker: listen, say so, serve, and never return."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.default_int_handler)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (self.ready_r, self.lifeline_w, self.wakeup_r, self.wakeup_w):
                os.close(fd)
            if REUSE_PORT:
                host, port = self.sock.getsockname()[:2]
                sock = _listener(host, port)
                self.sock.close()  # the parent's, which must not outlive it in a worker
            else:
                sock = self.sock
            server = self.new_server()
            threading.Thread(target=_watch_parent, args=(self.lifeline_r, server),
                             name="fastwrap-parent-watch", daemon=True).start()
            os.write(self.ready_w, b".")
            os.close(self.ready_w)
            server.run(sock)
            status = 0
        except KeyboardInterrupt:
            status = 0  # stopped before the server had installed its own handlers
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                # Never back into the parent's stack (its loop, its finally blocks).
                os._exit(status)

    def _start(self) -> None:
        # Signals wait until the worker has its own handlers: a stop asked
        # for in between would otherwise reach the parent's handler, copied
        # into the worker by fork(), and be forgotten there.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                self._worker(blocked)
            self.workers[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    # -- the parent's side -----------------------------------------------------------------

    def _on_signal(self, number: int, frame: object) -> None:
        self.signals.append(number)

    def run(self) -> int:
        previous = {number: signal.getsignal(number) for number in _HANDLED}
        previous_wakeup = signal.set_wakeup_fd(self.wakeup_w)
        try:
            for number in _HANDLED:
                signal.signal(number, self._on_signal)
            for _ in range(self.count):
                self._start()
            return self._loop()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(previous_wakeup)
            for number, handler in previous.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(number, handler)
            for fd in (self.ready_r, self.ready_w, self.lifeline_r, self.lifeline_w,
                       self.wakeup_r, self.wakeup_w):
                if fd >= 0:
                    os.close(fd)

    def _loop(self) -> int:
        while True:
            timeout = 1.0
            now = time.monotonic()
            if self.stopping:
                timeout = max(0.0, self.deadline - now)
            elif len(self.workers) < self.count:
                timeout = max(0.0, self.restart_at - now)
            try:
                select.select([self.wakeup_r, self.ready_r], [], [], timeout)
            except InterruptedError:
                pass
            self._drain()
            while self.signals:
                number = self.signals.pop(0)
                if number == signal.SIGCHLD:
                    continue
                if not self.stopping:
                    self._begin_stop()
                elif number == signal.SIGINT:  # the second Ctrl-C
                    self.say("Interrupted again: stopping at once.")
                    self._kill_all()
                    return 128 + signal.SIGINT
            self._reap()
            if self.stopping:
                if not self.workers:
                    return 0
                if time.monotonic() >= self.deadline:
                    self.say(f"{len(self.workers)} worker(s) still running "
                             f"{self.grace:g} s after the stop: killing them.")
                    self._kill_all()
                    return 1
                continue
            if self.early_deaths > EARLY_DEATHS_ALLOWED:
                self.say(f"workers keep dying as they start ({self.early_deaths} in a row, "
                         f"see above): giving up.")
                return 1
            if len(self.workers) < self.count and time.monotonic() >= self.restart_at:
                while len(self.workers) < self.count:
                    self._start()

    def _drain(self) -> None:
        for fd in (self.wakeup_r, self.ready_r):
            while True:
                try:
                    data = os.read(fd, 512)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    break
                if fd == self.ready_r:
                    self.ready += len(data)
        if not self.announced and self.ready >= self.count:
            self.announced = True
            self.announce()

    def _reap(self) -> None:
        # Worker by worker, not waitpid(-1): other children of an embedding
        # program keep their exit statuses for it.
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            started = self.workers.pop(pid)
            if self.stopping:
                continue
            lived = time.monotonic() - started
            if lived < EARLY_DEATH:
                self.early_deaths += 1
                delay = FIRST_BACKOFF * 2 ** (self.early_deaths - 1)
            else:
                self.early_deaths = 0
                delay = 0.0
            self.restart_at = time.monotonic() + delay
            self.say(f"worker {pid} {_describe(status)} after {lived:.1f} s: "
                     f"starting another" + (f" in {delay:g} s" if delay else "") + ".")

    def _begin_stop(self) -> None:
        self.stopping = True
        self.deadline = time.monotonic() + self.grace + STOP_MARGIN
        self.say(f"Stopping: responses in flight have {self.grace:g} s to finish.")
        if not REUSE_PORT:
            # The workers' shared listener: with the parent's copy open, it would
            # still take connections into its backlog once every worker stopped.
            self.sock.close()
        os.close(self.lifeline_w)  # every worker's stop()
        self.lifeline_w = -1

    def _signal_all(self, number: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    def _kill_all(self) -> None:
        self._signal_all(signal.SIGKILL)
        for pid in list(self.workers):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.workers.pop(pid, None)


def supervise(new_server: Callable[[], Serving], host: str, port: int, workers: int,
              grace: float, *, announce: Callable[[Tuple[str, int]], None],
              say: Optional[Callable[[str], None]] = None) -> int:
    """Serve *host*:*port* with *workers* forked processes; the exit status when they stop.

    Each worker calls *new_server* and runs the server on a listening
    socket.  Its ``stop()`` must finish the responses in flight within
    *grace* seconds; in the main thread, its own handlers should treat a
    first SIGINT or SIGTERM as ``stop()`` and a second SIGINT as "at once".
    The port is bound here first: its ``OSError`` is raised before any worker
    starts.  *announce* is called with the address once every worker
    listens; *say* (by default a line on stderr) reports a worker replaced
    and the stop.  Returns 0 after a clean stop.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if grace < 0:
        raise ValueError(f"grace must be 0 or more seconds, got {grace}")
    if not hasattr(os, "fork"):
        raise ValueError("several workers need fork(), which this platform lacks: "
                         "run one worker")
    sock = _claim(host, port)
    try:
        address = sock.getsockname()[:2]
        supervisor = _Supervisor(new_server, sock, workers, grace, lambda: announce(address),
                                 say or _say)
        return supervisor.run()
    finally:
        sock.close()


def run(config: Config, host: str, port: int, workers: int = 1, *,
        announce: Optional[Callable[[Tuple[str, int]], None]] = None) -> int:
    """Serve *config* on *host*:*port* with *workers* processes until stopped.

    One worker serves in this process; more are forked (see the module).
    The port is bound first, and its ``OSError`` raised before anything
    else.  *announce* is called with the address once it is served.  Returns
    the exit status: 0 after a clean stop.
    """
    from .core import Server

    def new_server() -> Server:
        return Server(config)

    def nothing(address: Tuple[str, int]) -> None:
        pass

    if workers > 1:
        return supervise(new_server, host, port, workers, config.grace,
                         announce=announce or nothing)
    with bind(host, port) as sock:
        sock.listen(BACKLOG)
        (announce or nothing)(sock.getsockname()[:2])
        new_server().run(sock)
    return 0


def _say(line: str) -> None:
    sys.stderr.write(f"fastwrap serve: {line}\n")
    sys.stderr.flush()
