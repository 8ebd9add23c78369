"""The pure-Python engine: the same types as the compiled one, built on os.*.

Used where the extension is not built, and when FASTWRAP_NO_EXTENSIONS=1.
Every decision comes from :mod:`fastwrap._plan`; this module only moves bytes.
"""
from __future__ import annotations

import errno
import mmap
import os
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, Optional, Union

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import ctypes
except ImportError:  # builds without libffi: cold files cannot be told apart
    ctypes = None  # type: ignore[assignment]

from . import _plan, _response
from ._paths import MMAP, READ, READINTO, SENDFILE, SPLICE
from ._plan import check_blksize, check_filelike, check_headers

IMPLEMENTATION = "python"

# What the API accepts, for type checkers: a file object or bytes-like
# source, and a socket, descriptor or object with fileno() as dest.
_FileLike = Any
_Dest = Union[int, Any]

SUPPORTED_PATHS = frozenset(
    path for path, present in (
        (SENDFILE, hasattr(os, "sendfile")),
        (SPLICE, hasattr(os, "splice")),  # Python 3.10+, Linux
        (MMAP, True),
        (READINTO, True),
        (READ, True),
    ) if present
)

# Linux refuses larger single transfers (MAX_RW_COUNT = INT_MAX & PAGE_MASK).
MAX_CALL = 0x7FFFF000
PIPE_CHUNK = 1 << 20
TLS_CHUNK = 256 * 1024

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0)
_TCP_CORK = getattr(socket, "TCP_CORK", None)
_CAN_MASK = hasattr(signal, "pthread_sigmask") and hasattr(signal, "SIGPIPE")
_POLLIN = _plan.POLLIN
_POLLOUT = _plan.POLLOUT
_MAP_FAILED = 2**64 - 1 if sys.maxsize > 2**32 else 2**32 - 1  # (void *)-1

try:
    import ssl
    _SSL_WANT_WRITE: Any = ssl.SSLWantWriteError
    _SSL_WANT_READ: Any = ssl.SSLWantReadError
except ImportError:  # pragma: no cover
    _SSL_WANT_WRITE = _SSL_WANT_READ = ()


def select_path(source: Any, dest: Any) -> str:
    """The path a transmission of *source* to *dest* would take now."""
    return _plan.select_path(source, dest, SUPPORTED_PATHS)


def available_paths() -> tuple[str, ...]:
    """The paths this engine can use on this platform, less the disabled ones."""
    return _plan.available_paths(SUPPORTED_PATHS)


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file in blksize chunks, or transmit it."""

    def __init__(self, filelike: Any, blksize: int = _plan.DEFAULT_BLKSIZE) -> None:
        check_filelike(filelike)
        self.blksize = check_blksize(blksize)
        self.filelike = filelike
        self._closed = False
        # The compiled twin's critical section on the wrapper: without a GIL,
        # two threads could take the same bytes or close under a read.
        self._lock = threading.Lock()
        # Bytes-like objects have no position of their own: the wrapper keeps it.
        self._memory: Optional[memoryview] = None
        self._position = 0
        if not isinstance(filelike, mmap.mmap) and not hasattr(filelike, "read"):
            self._memory = _plan.byte_view(filelike)

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        if self._memory is not None:
            with self._lock:
                chunk = self._next_in_memory(self._memory)
        else:
            if self._closed:
                raise ValueError("I/O operation on closed FileWrapper")
            chunk = _plan.read_chunk(self.filelike, self.blksize)
        if not chunk:
            raise StopIteration
        return chunk

    def _next_in_memory(self, memory: memoryview) -> bytes:
        if self._closed:
            raise ValueError("I/O operation on closed FileWrapper")
        start = self._position
        chunk = memory[start:start + self.blksize].tobytes()
        self._position = start + len(chunk)
        return chunk

    def close(self) -> None:
        """Close the wrapped object (once), through its ``close`` of this moment."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._memory is not None:
                self._memory.release()
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "FileWrapper":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def seekable(self) -> bool:
        if self._memory is not None:
            self._check_open_memory()
            return True
        seekable = getattr(self.filelike, "seekable", None)
        return bool(seekable()) if seekable is not None else False

    def _check_open_memory(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed FileWrapper")

    def tell(self) -> int:
        if self._memory is not None:
            self._check_open_memory()
            return self._position
        return int(self.filelike.tell())

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._memory is None:
            return int(self.filelike.seek(offset, whence))
        with self._lock:
            self._check_open_memory()
            base = (0, self._position, len(self._memory))[whence]
            position = base + offset
            if position < 0:
                raise ValueError(f"negative seek position {position}")
            self._position = position
        return position

    def transmit(self, dest: Any, count: Optional[int] = None,
                 headers: Any = b"") -> int:
        """Send the file to *dest* from its current position; return body bytes sent."""
        return _run(Transmission(self, dest, count, headers))


class Transmission:
    """A transmission that advances one non-blocking step at a time."""

    def __init__(self, source: Any, dest: Any, count: Optional[int] = None,
                 headers: Any = b"", *, nowait: bool = False) -> None:
        self._plan = _plan.Plan(source, dest, count, SUPPORTED_PATHS)
        self._nowait = nowait  # never wait for the disk in a step: report it
        self._resident_end = 0  # the file is known to be in the page cache up to here
        self._step_start = 0  # sent when the current step began
        self._blocked = False
        self._prefix = check_headers(headers)
        self._prefix_more = False
        self.sent = 0
        self.done = False
        self._moved = 0  # by the current step, headers included
        self._pending: Optional[memoryview] = None  # body bytes read, not yet sent
        self._buffer: Optional[memoryview] = None
        self._pipe: Optional[tuple[int, int]] = None
        self._in_pipe = 0
        self._wait = (self._plan.dest.fd, _POLLOUT)
        self._busy = threading.Lock()  # a thread is inside send(), run(), fetch() or close()
        if self._plan.length == 0 and not self._prefix:
            self._finish()

    @property
    def path(self) -> str:
        """The path carrying the body: sendfile, splice, mmap, readinto or read."""
        return self._plan.path

    @property
    def waiting(self) -> Optional[_plan.Wait]:
        """What the last step stopped on (a Wait of fd and event), or None.

        None: the transmission is done, or ``send()`` can go on at once.
        Otherwise wait for ``event`` on ``fd`` before the next ``send()``:
        ``"write"``, ``"read"``, or ``"disk"`` (run :meth:`fetch` off the loop).
        """
        if self.done or not self._blocked:
            return None
        return _plan.waiting(*self._wait)

    def fetch(self) -> None:
        """Read the source's next bytes into the page cache; blocks on the disk.

        For a worker thread, when ``waiting.event`` is ``"disk"``; the
        transmission must stay open until it returns.  Does nothing otherwise.
        """
        self._claim()
        try:
            self._fetch()
        finally:
            self._busy.release()

    def send(self) -> int:
        """Do one non-blocking step; return the bytes (headers included) it sent.

        Raises BlockingIOError when nothing could be sent.  After any step,
        ``waiting`` says what the next one needs first.
        """
        self._claim()
        try:
            return self._send()
        finally:
            self._busy.release()

    def run(self) -> int:
        """Drive the transmission to its end on a blocking *dest*; return body bytes sent.

        Waits for the destination as long as its timeout allows, and closes
        the transmission however it ends.
        """
        return _run(self)

    def close(self) -> None:
        """Stop: leave the source just after the last byte sent, free the pipe."""
        self._claim()
        try:
            self._close()
        finally:
            self._busy.release()

    def __enter__(self) -> "Transmission":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_pipe", None) is not None:
            self._close()  # the last reference: no other thread can be inside

    # -- driving -------------------------------------------------------------

    def _claim(self) -> None:
        if not self._busy.acquire(False):
            raise _plan.in_use_error()

    def _fetch(self) -> None:
        if self.done or not self._blocked or self._wait[1] != _plan.WAIT_DISK:
            return
        _plan.fetch(self._plan.src_fd, self._plan.start + self.sent, self._window())

    def _send(self) -> int:
        if self.done:
            return 0
        self._moved = 0
        self._blocked = False
        self._step_start = self.sent
        self._wait = (self._plan.dest.fd, _POLLOUT)
        guard = _SigpipeGuard() if _CAN_MASK else None
        try:
            if self._prefix:
                self._send_prefix()
            if not self._prefix and not self.done:
                self._body()
        except (BlockingIOError, _SSL_WANT_WRITE, _SSL_WANT_READ) as exc:
            if isinstance(exc, _SSL_WANT_READ):
                self._wait = (self._plan.dest.fd, _POLLIN)
            self._blocked = True
            if not self._moved:
                raise BlockingIOError(errno.EAGAIN, "no bytes could be sent now") from None
        except OSError as exc:
            successor = self._plan.fallback(exc, self.sent)
            if successor is None:
                self._close()
                raise
            self._take_back_pipe()
            self._plan = successor
            moved = self._moved
            return moved + self._send()
        except BaseException:
            self._close()
            raise
        finally:
            if guard is not None:
                guard.restore()
        return self._moved

    def _close(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        if not self.done:
            self.done = True
            pending = self._pending
            self._pending = None
            if pending and self._plan.path in (READ, READINTO):
                _unread(self._plan.reader, len(pending))
            self._plan.finish(self.sent)

    # -- the steps -----------------------------------------------------------

    def _take_back_pipe(self) -> None:
        # Bytes already moved from the source into the intermediate pipe
        # must go first on the next path, or they would be lost.
        if self._in_pipe:
            assert self._pipe is not None
            data = bytearray()
            while len(data) < self._in_pipe:
                data += os.read(self._pipe[0], self._in_pipe - len(data))
            self._pending = memoryview(data)
            self._in_pipe = 0

    def _finish(self) -> None:
        if self._prefix_more and self.sent == 0:
            _push(self._plan.dest)
        self._close()

    def _remaining(self) -> int:
        length = self._plan.length
        return -1 if length < 0 else length - self.sent

    def _window(self) -> int:
        """How much of a regular file a nowait step probes, or a fetch reads."""
        remaining = self._remaining()
        return _plan.RESIDENT_WINDOW if remaining < 0 else min(remaining, _plan.RESIDENT_WINDOW)

    def _resident(self) -> int:
        """Bytes from the file position that can be read without the disk; raises if none.

        -1: end the step here, at the end of a window it sent from, so that
        an event loop runs its other tasks between windows: a fast reader
        could otherwise take a whole file in one step, and a step is at most
        a window.  A probe covers a window, and a step often sends far less
        (what the socket takes): the next steps send from the same probe.
        """
        plan = self._plan
        position = plan.start + self.sent
        if position >= self._resident_end:
            if self.sent > self._step_start:
                return -1
            self._resident_end = position + _resident(plan.src_fd, position, self._window())
        if self._resident_end == position:
            self._wait = (plan.src_fd, _plan.WAIT_DISK)
            raise BlockingIOError(errno.EAGAIN, "the file's next bytes are on the disk")
        return self._resident_end - position

    def _send_prefix(self) -> None:
        dest = self._plan.dest
        prefix = self._prefix
        more = self._plan.length != 0
        if dest.tls:
            n = dest.sock.send(prefix)
        elif dest.is_socket and isinstance(dest.sock, socket.socket):
            # MSG_MORE holds the headers back to leave with the first body bytes.
            flags = _MSG_NOSIGNAL | (_MSG_MORE if more else 0)
            n = dest.sock.send(prefix, flags)
            self._prefix_more = more and bool(_MSG_MORE)
        else:
            n = os.write(dest.fd, prefix)
        self._prefix = prefix[n:]
        self._moved += n
        if not self._prefix and self._plan.length == 0:
            self._finish()

    def _body(self) -> None:
        path = self._plan.path
        if path == SENDFILE:
            self._sendfile()
        elif path == SPLICE:
            self._splice()
        elif path == MMAP:
            self._memory()
        else:
            self._read_loop(path == READINTO)

    def _advance(self, n: int) -> None:
        self._moved += n
        self.sent += n
        if self.sent == self._plan.length:
            self._finish()

    def _sendfile(self) -> None:
        plan = self._plan
        while not self.done:
            count = min(self._remaining(), MAX_CALL)
            if self._nowait:
                # Only what is in the page cache: sendfile(2) of the rest
                # would hold the event loop while the disk reads it.
                count = self._resident()
                if count < 0:
                    break
            n = os.sendfile(plan.dest.fd, plan.src_fd, plan.start + self.sent, count)
            if n == 0:  # EOF: the file is shorter than it was at the start
                self._finish()
                break
            self._advance(n)

    def _splice(self) -> None:
        plan = self._plan
        if plan.drain is not None:
            # Bytes a buffered reader already took from the pipe go first.
            reader = plan.drain
            plan.drain = None
            try:
                held = len(reader.peek())  # b"" at EOF, and from a non-blocking pipe
            except BlockingIOError:
                self._wait = (plan.src_fd, _POLLIN)
                raise
            want = held if self._remaining() < 0 else min(held, self._remaining())
            if want:
                self._pending = memoryview(reader.read(want))
                plan.drained = want
        if self._pending:
            self._flush_pending()
        src_is_pipe = stat.S_ISFIFO(plan.src.mode)
        while not self.done:
            remaining = self._remaining()
            want = PIPE_CHUNK if remaining < 0 else min(remaining, PIPE_CHUNK)
            if src_is_pipe:
                try:
                    n = os.splice(plan.src_fd, plan.dest.fd, want, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    if not _plan.ready(plan.src_fd, _POLLIN, 0):
                        self._wait = (plan.src_fd, _POLLIN)  # the source is empty
                    raise
                if n == 0:
                    self._finish()
                    break
            else:
                if self._pipe is None:
                    self._pipe = _make_pipe()
                if self._in_pipe == 0:
                    try:
                        n = os.splice(plan.src_fd, self._pipe[1], want, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        self._wait = (plan.src_fd, _POLLIN)  # the source has nothing yet
                        raise
                    if n == 0:
                        self._finish()
                        break
                    self._in_pipe = n
                n = os.splice(self._pipe[0], plan.dest.fd, self._in_pipe,
                              flags=_SPLICE_FLAGS)
                self._in_pipe -= n
            self._advance(n)

    def _memory(self) -> None:
        plan = self._plan
        dest = plan.dest
        memory = plan.memory
        assert memory is not None
        while not self.done:
            start = plan.start + self.sent
            try:
                if dest.tls:
                    n = dest.sock.send(memory[start:start + min(self._remaining(), TLS_CHUNK)])
                else:
                    n = os.write(dest.fd, memory[start:start + min(self._remaining(), MAX_CALL)])
            except OSError as exc:
                if not plan.source_shrank(exc):
                    raise
                self._finish()
                break
            self._advance(n)

    def _read_loop(self, use_readinto: bool) -> None:
        plan = self._plan
        reader = plan.reader
        if self._pending:
            self._flush_pending()
        while not self.done:
            remaining = self._remaining()
            want = plan.chunk if remaining < 0 else min(plan.chunk, remaining)
            if self._nowait and plan.on_disk:
                # A read of the rest would hold the event loop on the disk.
                want = min(want, self._resident())
                if want < 0:
                    break
            if use_readinto and self._buffer is None:
                self._buffer = memoryview(bytearray(plan.chunk))
            chunk = _plan.fill(reader, self._buffer, want, remaining)
            if chunk is None:  # a non-blocking source with nothing yet
                self._wait_for_source()
                raise BlockingIOError(errno.EAGAIN, "the source has no data yet")
            if not chunk:
                self._finish()
                break
            self._pending = chunk
            self._flush_pending()

    def _flush_pending(self) -> None:
        """Send the bytes already read; raises BlockingIOError if they cannot all go."""
        dest = self._plan.dest
        self._wait = (dest.fd, _POLLOUT)
        while self._pending and not self.done:
            if dest.tls:
                n = dest.sock.send(self._pending)
            else:
                n = os.write(dest.fd, self._pending)
            self._pending = self._pending[n:]
            self._advance(n)

    def _wait_for_source(self) -> None:
        try:
            fd = self._plan.reader.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        # No descriptor to wait on: -1 makes the blocking loop back off briefly.
        self._wait = (fd, _POLLIN)

    def _block(self, timeout: Optional[float]) -> None:
        """Wait until the end that stopped the last step is ready again."""
        fd, events = self._wait
        if events == _plan.WAIT_DISK:
            self._fetch()  # blocking anyway: read the cold bytes here
            return
        self._wait = (self._plan.dest.fd, _POLLOUT)
        if fd < 0:
            time.sleep(_plan.BACKOFF)
            return
        if not _plan.ready(fd, events, timeout):
            raise TimeoutError(_plan.timeout_message(timeout, fd == self._plan.dest.fd))


def _run(tx: Transmission) -> int:
    """Drive *tx* to the end, waiting as the destination's timeout allows."""
    timeout = tx._plan.dest.timeout
    tx._claim()
    try:
        _plan.check_blocking(tx._plan.dest)
        while not tx.done:
            try:
                tx._send()
            except BlockingIOError:
                tx._block(timeout)
            except socket.timeout as exc:  # an alias of TimeoutError from 3.10
                raise TimeoutError(*exc.args) from None
    finally:
        tx._close()
        tx._busy.release()
    return tx.sent


def transmit_file(source: Any, dest: Any, count: Optional[int] = None,
                  headers: Any = b"") -> int:
    """Blocking transmission of *source* (a file, buffer or FileWrapper)."""
    return Transmission(source, dest, count, headers).run()


def resident(file: Any, offset: int, length: int) -> int:
    """How many of the *length* bytes of *file* from *offset* are in the page cache.

    Counted up to the first page that is not: fewer than *length* means that
    reading on would wait for the disk (an event loop reads those in a worker
    thread).  *file* is a descriptor or has ``fileno()``.  Where residency
    cannot be probed (no ``mincore``), every byte counts as resident.
    """
    return _plan.resident(_resident, file, offset, length)


def _unread(reader: Any, n: int) -> None:
    # A chunk was read but not all of it left: put the position back after
    # the last byte sent, as the read() loop would have it.
    try:
        if reader.seekable():
            reader.seek(-n, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        pass


def _resident(fd: int, offset: int, length: int) -> int:
    """How many bytes of [offset, offset + length) of *fd* are in the page cache.

    Counted from *offset* up to the first page that is not; what
    fw_resident does in the compiled engine, through mmap(2) and mincore(2)
    called by ctypes (Python's mmap module does not expose mincore).  A
    file that cannot be probed counts as resident, so that it is sent as
    before rather than never.
    """
    calls = _memory_calls()
    if calls is None or length <= 0:
        return length
    map_file, mincore, munmap = calls
    page = mmap.PAGESIZE
    start = offset - offset % page
    span = offset + length - start
    pages = (span + page - 1) // page
    address = map_file(None, span, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if address in (None, _MAP_FAILED):
        return length
    vec = (ctypes.c_ubyte * pages)()
    rc = mincore(address, span, vec)
    munmap(address, span)
    if rc != 0:
        return length
    resident = next((i for i, v in enumerate(vec) if not v & 1), pages)
    if resident == 0 and offset >= os.fstat(fd).st_size:
        # Past the end of a file that shrank nothing is resident, and
        # nothing is to be read either: let the send find the end.
        return length
    return max(0, min(resident * page - (offset - start), length))


_MEMORY_CALLS: Any = False  # not looked up yet


def _memory_calls() -> Any:
    """libc's mmap (with a 64-bit offset), mincore and munmap, or None where not to be had."""
    global _MEMORY_CALLS
    if _MEMORY_CALLS is False:
        # Assigned once, whole: a thread arriving meanwhile looks them up too.
        _MEMORY_CALLS = _look_up_memory_calls()
    return _MEMORY_CALLS


def _look_up_memory_calls() -> Any:
    if ctypes is None or sys.platform == "win32":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            map_file = libc.mmap64  # a 64-bit offset on 32-bit glibc too
        except AttributeError:
            map_file = libc.mmap    # musl, the BSDs: off_t is 64-bit
        map_file.restype = ctypes.c_void_p
        map_file.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                             ctypes.c_int, ctypes.c_int, ctypes.c_int64)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        return (map_file, libc.mincore, libc.munmap)
    except (AttributeError, OSError):
        return None


def _make_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux, Python 3.10+
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_CHUNK)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default size still works
    return r, w


def _push(dest: _plan.Dest) -> None:
    # Headers sent with MSG_MORE and no body after them: release them now
    # rather than after the kernel's 200 ms cork timeout.
    if _TCP_CORK is not None and dest.sock is not None:
        try:
            dest.sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
        except OSError:
            pass


class _SigpipeGuard:
    """Block SIGPIPE in this thread while bytes move, when it is not ignored.

    sendfile(2) and splice(2) cannot take MSG_NOSIGNAL; an embedding host that
    left SIGPIPE at its default would otherwise die on a client disconnect.
    """

    __slots__ = ("_old", "_was_pending")

    def __init__(self) -> None:
        # Always: signal.getsignal() cannot see a disposition that C code
        # changed behind Python's back.
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        self._was_pending = signal.SIGPIPE in signal.sigpending()

    def restore(self) -> None:
        if not self._was_pending and signal.SIGPIPE in signal.sigpending():
            # Ours: the EPIPE reports it.  (macOS has no sigtimedwait; the
            # signal is pending, so sigwait returns at once.)
            if hasattr(signal, "sigtimedwait"):
                signal.sigtimedwait({signal.SIGPIPE}, 0)
            else:
                signal.sigwait({signal.SIGPIPE})
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


_plan.register_wrapper(FileWrapper)
transmit = _response.make_transmit(transmit_file)
