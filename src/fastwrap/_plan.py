"""Every decision a transmission makes, written once for both engines.

Which path carries the bytes, where the body starts, how many bytes it may
hold, when a zero-copy path is given up: the compiled engine and its
pure-Python twin both ask this module, so they cannot drift apart.  The
engines themselves only move bytes along the path they are handed.
"""
from __future__ import annotations

import errno
import io
import mmap
import operator
import os
import select
import socket
import stat
import sys
import tempfile
import time
from typing import Any, Iterator, NamedTuple, Optional

from . import _paths, _stats
from ._paths import MMAP, READ, READINTO, SENDFILE, SPLICE, log

try:
    import ssl
except ImportError:  # Python built without OpenSSL
    ssl = None  # type: ignore[assignment]

DEFAULT_BLKSIZE = 8192
# The read loops move at least this much per call whatever blksize says:
# Django passes 4096, which would cost a syscall pair every 4 KiB.
MIN_CHUNK = 64 * 1024
READ_CHUNK = 256 * 1024
# ...and at most this much, whatever blksize says: the buffer is allocated.
MAX_CHUNK = 4 * 1024 * 1024
# Counts beyond this are "no limit" in practice, and fit a C int64.
MAX_COUNT = 2**63 - 1

# errno values meaning "this path cannot serve this pair of descriptors";
# only before the first body byte may they send us to the next path.
UNSUPPORTED_ERRNOS = frozenset(
    e for e in (
        getattr(errno, name, None)
        for name in ("EINVAL", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "ENOTSOCK",
                     "ESPIPE", "EXDEV", "EAFNOSUPPORT")
    ) if e is not None
)

# Types whose fileno() yields exactly the bytes read() would.  A gzip or
# bz2 file has a fileno() too, of the *compressed* file: sending from it
# would put the wrong bytes on the wire.
_FD_FILE_TYPES = (io.FileIO, io.BufferedReader, io.BufferedRandom)
_FD_FILE_METHODS = ("read", "readinto", "read1", "peek", "tell", "seek", "fileno")

# Only Linux's sendfile(2) writes to any descriptor; the BSDs' need a socket.
SENDFILE_NEEDS_SOCKET = not sys.platform.startswith("linux")

# Registered by each engine: the FileWrapper types this module unwraps.
_wrapper_types: tuple[Any, ...] = ()


def register_wrapper(cls: type) -> None:
    global _wrapper_types
    if cls not in _wrapper_types:
        _wrapper_types = _wrapper_types + (cls,)


# -- argument checks shared by both FileWrapper and Transmission types -------

def check_filelike(filelike: Any) -> None:
    """Reject what no path could send, with the reason and the fix."""
    if filelike is None:
        raise TypeError(
            "FileWrapper needs a binary file object or a bytes-like object, got None")
    inner = _unwrap_tempfile(filelike)
    if isinstance(inner, io.TextIOBase):
        raise TypeError(
            f"FileWrapper needs a binary file, got the text-mode {type(inner).__name__}: "
            "open the file with mode 'rb'")
    if getattr(filelike, "closed", False) is True:
        raise ValueError("I/O operation on closed file")
    if isinstance(filelike, mmap.mmap) or hasattr(filelike, "read"):
        return
    try:
        memoryview(filelike)
    except TypeError:
        raise TypeError(
            f"FileWrapper needs a file object with read() or a bytes-like object, "
            f"got {type(filelike).__name__}") from None


def check_blksize(blksize: Any) -> int:
    if isinstance(blksize, bool):
        raise TypeError("blksize must be an int, got bool")
    size: int = operator.index(blksize)
    if not 0 < size <= sys.maxsize:
        raise ValueError(
            f"blksize must be a positive number of bytes up to {sys.maxsize}, got {size}")
    return size


def check_count(count: Any) -> int:
    """Return count as an int, or -1 for "no limit"."""
    if count is None:
        return -1
    if isinstance(count, bool):
        raise TypeError("count must be an int or None, got bool")
    try:
        limit: int = operator.index(count)
    except TypeError:
        raise TypeError(
            f"count must be an int or None, got {type(count).__name__}") from None
    if limit < 0:
        raise ValueError(f"count must be >= 0 or None, got {limit}")
    return min(limit, MAX_COUNT)


def check_headers(headers: Any) -> memoryview:
    if isinstance(headers, str):
        raise TypeError("headers must be bytes (encode them as latin-1), got str")
    try:
        view = memoryview(headers)
    except TypeError:
        raise TypeError(
            f"headers must be a bytes-like object, got {type(headers).__name__}") from None
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.c_contiguous:
        raise TypeError("headers must be a contiguous bytes-like object")
    return view.cast("B")


def read_chunk(filelike: Any, blksize: int) -> bytes:
    """The next chunk of a FileWrapper's iteration: read(blksize) as bytes."""
    chunk = filelike.read(blksize)
    while chunk is None:  # a non-blocking raw file with nothing yet
        wait_readable(filelike)
        chunk = filelike.read(blksize)
    if type(chunk) is not bytes:
        if isinstance(chunk, str):
            raise text_chunk_error(chunk)
        chunk = bytes(chunk)
    return chunk


def fill(reader: Any, buffer: Optional[memoryview], want: int,
         remaining: int) -> Optional[memoryview]:
    """About *want* bytes from *reader*: readinto *buffer*, or read() if it is None.

    Returns None when a non-blocking source has nothing yet, and an empty
    view at EOF.  A read() that returns more than asked (decoding readers
    do) keeps every byte, up to *remaining* (-1: no limit), never past it.
    """
    try:
        if buffer is not None:
            n = reader.readinto(buffer[:want])
            if n is None:
                return None
            n = operator.index(n)
            if n < 0:
                raise ValueError(f"readinto() returned {n}, a negative byte count")
            # A readinto() claiming more than it was given has no such bytes.
            return buffer[:min(n, want)]
        data = reader.read(want)
    except BlockingIOError:  # a buffered reader over a non-blocking raw file
        return None
    if data is None:
        return None
    if isinstance(data, str):
        raise text_chunk_error(data)
    view = byte_view(data)
    return view if remaining < 0 else view[:remaining]


def timeout_message(timeout: Optional[float], on_dest: bool) -> str:
    if on_dest:
        return f"no progress for {timeout} s: the peer stopped reading"
    return f"no progress for {timeout} s: the source had no data"


def text_chunk_error(chunk: Any) -> TypeError:
    return TypeError(
        f"read() returned {type(chunk).__name__}, not bytes: "
        "the wrapped file must be opened in binary mode ('rb')")


def in_use_error() -> RuntimeError:
    """A Transmission called from a thread while another is inside it."""
    return RuntimeError(
        "this Transmission is in use by another thread: drive each transmission "
        "from one thread at a time")


# -- the two ends --------------------------------------------------------------

class Dest:
    """Where the bytes go: a socket (plain or TLS), a pipe or a file."""

    __slots__ = ("obj", "fd", "sock", "tls", "timeout", "is_socket")

    def __init__(self, dest: Any) -> None:
        self.obj = dest
        self.sock: Any = None
        self.timeout: Optional[float] = None
        if isinstance(dest, bool) or dest is None:
            raise TypeError(
                "dest must be a socket, a file descriptor or an object with fileno(), "
                f"got {dest!r}")
        if isinstance(dest, int):
            if dest < 0:
                raise ValueError(f"dest file descriptor must be >= 0, got {dest}")
            self.fd = dest
        else:
            fileno = getattr(dest, "fileno", None)
            if fileno is None:
                raise TypeError(
                    "dest must be a socket, a file descriptor or an object with fileno(), "
                    f"got {type(dest).__name__}")
            self.fd = fileno()
            if self.fd < 0:  # what a closed socket.socket reports
                raise OSError(errno.EBADF, "dest is closed (fileno() is -1)")
            gettimeout = getattr(dest, "gettimeout", None)
            if gettimeout is not None:
                self.timeout = gettimeout()
                self.sock = dest
        if type(dest) is socket.socket:  # the common case needs no fstat
            self.tls = False
            self.is_socket = True
            return
        # gevent's and eventlet's TLS sockets are not ssl.SSLSocket: anything
        # with an SSL object is TLS, and the kernel must never write to it.
        self.tls = (ssl is not None and isinstance(dest, ssl.SSLSocket)) or any(
            hasattr(dest, name) for name in ("_sslobj", "getpeercert", "do_handshake"))
        # Also proves the descriptor is open before any byte moves.
        self.is_socket = stat.S_ISSOCK(os.fstat(self.fd).st_mode)


def check_blocking(dest: Dest) -> None:
    """A blocking transmit needs a destination it may wait on."""
    check_timeout(dest.sock is not None, dest.timeout)


def check_timeout(is_socket_object: bool, timeout: Optional[float]) -> None:
    if is_socket_object and timeout == 0:
        raise ValueError(
            "dest is a non-blocking socket (timeout 0): use fastwrap.Transmission "
            "and wait for writability, or give the socket a timeout")


class Source:
    """What the bytes come from, classified once."""

    __slots__ = ("obj", "wrapper", "kind", "fd", "mode", "size")

    obj: Any
    wrapper: Any

    FILE = "file"          # a plain io file: its descriptor gives what read() gives
    MAPPING = "mapping"    # an mmap.mmap
    BUFFER = "buffer"      # bytes, bytearray, memoryview, array, numpy...
    READABLE = "readable"  # anything else with readinto() or read()

    def __init__(self, source: Any) -> None:
        wrapper: Any = None
        if type(source) not in _FD_FILE_TYPES:  # plain files need no more checks
            if isinstance(source, _wrapper_types):
                wrapper = source
                if source.closed:
                    raise ValueError("I/O operation on closed FileWrapper")
                source = source.filelike
            elif _is_wsgiref_wrapper(source):
                source = source.filelike
            source = _unwrap_tempfile(source)
            if wrapper is None:
                check_filelike(source)
        self.obj = source
        self.wrapper = wrapper
        self.fd = -1
        self.mode = 0
        self.size = -1
        if isinstance(source, mmap.mmap):
            self.kind = Source.MAPPING
        elif _is_fd_file(source):
            if source.closed:
                raise ValueError("I/O operation on closed file")
            if not source.readable():
                raise io.UnsupportedOperation("the wrapped file is not open for reading")
            self.kind = Source.FILE
            self.fd = source.fileno()
            st = os.fstat(self.fd)
            self.mode = st.st_mode
            self.size = st.st_size
        elif hasattr(source, "read"):
            self.kind = Source.READABLE
        else:
            self.kind = Source.BUFFER

    def describe(self) -> str:
        if self.kind == Source.FILE:
            return f"{type(self.obj).__name__} fd {self.fd}"
        return type(self.obj).__name__


def _is_wsgiref_wrapper(obj: Any) -> bool:
    # wsgiref is imported lazily: most servers never load it.
    util = sys.modules.get("wsgiref.util")
    return util is not None and isinstance(obj, util.FileWrapper)


def is_plain_file_wrapper(obj: Any) -> bool:
    """Whether *obj* is a FileWrapper whose bytes are exactly its file's.

    fastwrap's own, or the stdlib's around a binary file; not a subclass
    that changes what iteration yields (that one must be iterated), nor a
    closed one.
    """
    if isinstance(obj, _wrapper_types):
        base = next(cls for cls in _wrapper_types if isinstance(obj, cls))
        if obj.closed:
            return False
    elif _is_wsgiref_wrapper(obj):
        base = sys.modules["wsgiref.util"].FileWrapper
        try:
            check_filelike(obj.filelike)
        except (TypeError, ValueError):
            return False  # a StringIO: the stdlib loop handles it as it always did
    else:
        return False
    cls = type(obj)
    return cls is base or all(getattr(cls, name, None) is getattr(base, name, None)
                              for name in ("__iter__", "__next__", "__getitem__"))


def _unwrap_tempfile(obj: Any) -> Any:
    # NamedTemporaryFile() returns a proxy whose attributes are the file's.
    if isinstance(obj, tempfile._TemporaryFileWrapper):
        return obj.file
    return obj


def _is_fd_file(obj: Any) -> bool:
    cls = type(obj)
    if cls is io.FileIO:
        return True
    if cls is io.BufferedReader or cls is io.BufferedRandom:
        return type(obj.raw) is io.FileIO
    for base in _FD_FILE_TYPES:
        if isinstance(obj, base):
            cls = type(obj)
            if cls is not base and any(
                    getattr(cls, name, None) is not getattr(base, name, None)
                    for name in _FD_FILE_METHODS):
                return False  # a subclass that may transform what it reads
            return base is io.FileIO or type(getattr(obj, "raw", None)) is io.FileIO
    return False


# -- choosing the path -----------------------------------------------------------

def _candidates(src: Source, dest: Dest,
                supported: frozenset[str]) -> Iterator[tuple[str, Optional[str]]]:
    """Yield (path, reason it cannot be used or None), fastest first."""
    if src.kind == Source.FILE:
        regular = stat.S_ISREG(src.mode)
        if not regular:
            yield SENDFILE, "not a regular file"
        elif src.size == 0:
            # /proc and sysfs files report 0 bytes and yet have content.
            yield SENDFILE, "st_size is 0 (empty, or a /proc-like file of unknown size)"
        elif dest.tls:
            yield SENDFILE, "dest is a TLS socket: the kernel would send plaintext"
        elif not dest.is_socket and SENDFILE_NEEDS_SOCKET:
            yield SENDFILE, "this platform's sendfile(2) only writes to sockets"
        else:
            yield SENDFILE, None
        if regular:
            yield SPLICE, "regular files go by sendfile"
        elif dest.tls:
            yield SPLICE, "dest is a TLS socket: the kernel would send plaintext"
        elif stat.S_ISFIFO(src.mode) or stat.S_ISCHR(src.mode) or stat.S_ISSOCK(src.mode):
            yield SPLICE, None
        else:
            yield SPLICE, "not a pipe, character device or socket"
        yield READINTO, None
        yield READ, None
    elif src.kind in (Source.MAPPING, Source.BUFFER):
        yield MMAP, None
        yield READ, None
    else:
        if hasattr(src.obj, "readinto"):
            yield READINTO, None
        else:
            yield READINTO, "no readinto()"
        yield READ, None


def choose(src: Source, dest: Dest, supported: frozenset[str],
           exclude: frozenset[str] = frozenset()) -> str:
    debug = log.isEnabledFor(10)
    for path, reason in _candidates(src, dest, supported):
        if reason is None:
            if path in exclude:
                reason = "it failed before the first byte"
            elif _paths.is_disabled(path):
                reason = "disabled"
            elif path not in supported:
                reason = "not available in this build or on this platform"
        if reason is None:
            return path
        if debug:
            log.debug("%s skipped for %s: %s", path, src.describe(), reason)
    raise AssertionError("the read path is always a candidate")  # pragma: no cover


def select_path(source: Any, dest: Any, supported: frozenset[str]) -> str:
    return choose(Source(source), Dest(dest), supported)


def available_paths(supported: frozenset[str]) -> tuple[str, ...]:
    return tuple(p for p in _paths.PATHS if p in supported and not _paths.is_disabled(p))


# -- the plan a transmission follows ------------------------------------------

class Plan:
    """A path plus everything its byte-moving loop needs, fixed at the start."""

    __slots__ = (
        "path", "src", "dest", "count", "excluded", "supported",
        "reader", "src_fd", "memory", "start", "length", "keeper",
        "drain", "drained", "chunk", "blksize", "on_disk",
    )

    def __init__(self, source: Any, dest: Any, count: Any,
                 supported: frozenset[str], excluded: frozenset[str] = frozenset(),
                 *, _src: Optional[Source] = None, _dest: Optional[Dest] = None) -> None:
        self.count = check_count(count) if _src is None else count
        self.src = src = _src or Source(source)
        self.dest = _dest or Dest(dest)
        self.supported = supported
        self.excluded = excluded
        self.path = choose(src, self.dest, supported, excluded)
        obj = src.obj
        self.reader = obj
        self.src_fd = src.fd
        self.memory: Optional[memoryview] = None
        self.start = -1          # where the body starts, when positional
        self.length = self.count  # bytes to send; -1 = until EOF
        self.keeper: Any = None  # object whose position is set to start + sent
        self.drain: Any = None   # buffered reader whose buffer goes before a splice
        self.drained = 0         # body bytes that came from that buffer
        blksize: int = src.wrapper.blksize if src.wrapper is not None else DEFAULT_BLKSIZE
        self.blksize = blksize
        self.chunk = min(max(blksize, MIN_CHUNK), MAX_CHUNK)

        # Bytes that may have to come from the disk: what a nowait step probes.
        self.on_disk = src.kind == Source.FILE and stat.S_ISREG(src.mode)
        if src.kind == Source.FILE:
            if obj.writable():
                obj.flush()  # unflushed writes are not in the file sendfile reads
            if stat.S_ISREG(src.mode):
                self.start = obj.tell()
                if src.size > 0:
                    # Fixed now, so a file that grows cannot overrun the response.
                    self._limit(max(src.size - self.start, 0))
                if self.path == SENDFILE:
                    self.keeper = obj
                self.chunk = min(max(blksize, READ_CHUNK), MAX_CHUNK)
            elif self.path == SPLICE and isinstance(obj, io.BufferedReader):
                self.drain = obj
        elif src.kind in (Source.MAPPING, Source.BUFFER):
            if src.kind == Source.MAPPING:
                self.keeper = obj
                self.start = obj.tell()
            elif src.wrapper is not None:
                self.keeper = src.wrapper
                self.start = int(src.wrapper.tell())
            else:
                self.start = 0
            memory = byte_view(obj)
            self._limit(max(len(memory) - self.start, 0))
            if self.path == MMAP:
                self.memory = memory
            else:
                # Read from memory here too, so the position ends up where
                # the bytes sent end, whatever the engine's read loop held.
                memory.release()
                self.reader = _MemoryReader(obj, self.start)

    def _limit(self, available: int) -> None:
        self.length = available if self.length < 0 else min(self.length, available)

    def fallback(self, exc: OSError, sent: int) -> Optional["Plan"]:
        """The next plan after *exc* ended this one before its first body byte.

        Only the kernel's zero-copy paths are given up (the others fail the
        same way whatever path follows them), and only while no byte has
        left by their own syscalls: bytes drained from a buffered reader's
        buffer came out of the source already, so the next path goes on
        after them.
        """
        if (self.path not in (SENDFILE, SPLICE) or sent != self.drained
                or exc.errno not in UNSUPPORTED_ERRNOS):
            return None
        log.debug("%s failed before the first byte (%s): trying the next path",
                  self.path, exc)
        _stats.record_fallback(self.path)
        self.release()
        return Plan(None, None, self.count, self.supported,
                    self.excluded | {self.path}, _src=self.src, _dest=self.dest)

    def source_shrank(self, exc: OSError) -> bool:
        """Whether *exc* means the file behind an mmap got shorter mid-send.

        The kernel reports a mapped page past the new end of file as EFAULT
        when send() copies from it: the transfer ends there, short, as
        sendfile's does at EOF.
        """
        return (self.path == MMAP and self.src.kind == Source.MAPPING
                and exc.errno == errno.EFAULT)

    def finish(self, sent: int) -> None:
        """Leave the source just after the last byte sent; let go of memory."""
        self.release()
        keeper, self.keeper = self.keeper, None
        finished(self.path, sent, keeper, self.start)

    def release(self) -> None:
        if self.memory is not None:
            self.memory.release()
            self.memory = None
        if isinstance(self.reader, _MemoryReader):
            self.reader.release()  # lets the application resize or close its mmap


def finished(path: str, sent: int, keeper: Any, start: int) -> None:
    """A transmission ended: count it, and leave *keeper* just after the last byte sent."""
    _stats.record(path, sent)
    if keeper is not None:
        keeper.seek(start + sent)


def byte_view(obj: Any) -> memoryview:
    view = memoryview(obj)
    if view.ndim == 1 and view.format == "B" and view.c_contiguous:
        return view
    if view.c_contiguous:
        return view.cast("B")
    # A strided array: one copy makes it sendable, in the order read() would give.
    flat = memoryview(view.tobytes())
    view.release()
    return flat


class _MemoryReader:
    """read()/readinto() over a buffer, for when the mmap path is switched off."""

    __slots__ = ("_view", "_pos")

    def __init__(self, obj: Any, start: int) -> None:
        self._view = byte_view(obj)
        self._pos = start

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), len(self._view) - self._pos)
        buf[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(self._pos + n, len(self._view))
        data = self._view[self._pos:end].tobytes()
        self._pos = end
        return data

    def release(self) -> None:
        self._view.release()


# How long to wait before asking again a source that has nothing to poll.
BACKOFF = 0.001
POLLIN = getattr(select, "POLLIN", 1)
POLLOUT = getattr(select, "POLLOUT", 4)


# Not a poll() event: the next bytes of a regular file are not in the page
# cache, so sending them would block on the disk (nowait transmissions).
WAIT_DISK = 0x10000
# How much of a file a nowait step checks for residency, and a fetch reads
# in: large enough that the probe's mmap and mincore cost nothing next to
# the bytes sent, small enough that one fetch is a few milliseconds of disk.
RESIDENT_WINDOW = 1 << 20
_FETCH_PIECE = 256 * 1024
_WAIT_NAMES = {POLLIN: "read", POLLOUT: "write", WAIT_DISK: "disk"}


class Wait(NamedTuple):
    """What a blocked step waits for before ``send()`` can make progress.

    *event* is ``"write"`` (*fd*, the destination, writable), ``"read"``
    (*fd* readable: a non-blocking source with no data yet, or a TLS
    destination that must read first) or ``"disk"`` (*fd*, the source file,
    has its next bytes on the disk: call ``Transmission.fetch()`` in a worker
    thread).  *fd* is -1 when there is nothing to poll: back off briefly.
    """
    fd: int
    event: str


def waiting(fd: int, events: int) -> Wait:
    """The Wait for a step that stopped on *events* (a poll event or WAIT_DISK) of *fd*."""
    return Wait(fd, _WAIT_NAMES[events])


def fetch(fd: int, offset: int, length: int) -> None:
    """Read [offset, offset + length) of the file *fd* so that it is in the page cache.

    Blocks on the disk, with the GIL released: an event loop runs it in a
    worker thread, as nginx's ``aio threads`` does, and sends the bytes from
    the page cache afterwards without blocking.
    """
    if hasattr(os, "posix_fadvise"):
        try:  # let the kernel read the whole window at once, not piece by piece
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only advice: the reads below bring the bytes in anyway
    end = offset + length
    while offset < end:
        piece = os.pread(fd, min(_FETCH_PIECE, end - offset), offset)
        if not piece:
            break  # the file is shorter now; the send finds its end
        offset += len(piece)


def resident(probe: Any, file: Any, offset: Any, length: Any) -> int:
    """Both engines' ``resident()``: *probe* answers for one window of at most RESIDENT_WINDOW."""
    if isinstance(file, bool) or not isinstance(file, int):
        fileno = getattr(file, "fileno", None)
        if fileno is None:
            raise TypeError(f"file must be a file descriptor or an object with fileno(), "
                            f"got {type(file).__name__}")
        file = fileno()
    if file < 0:
        raise ValueError(f"file descriptor must be >= 0, got {file}")
    start = _check_position("offset", offset)
    want = _check_position("length", length)
    total = 0
    while total < want:
        window = min(want - total, RESIDENT_WINDOW)
        found = probe(file, start + total, window)
        total += found
        if found < window:
            break
    return total


def _check_position(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    number: int = operator.index(value)
    if not 0 <= number <= MAX_COUNT:
        raise ValueError(f"{name} must be a byte count from 0 to {MAX_COUNT}, got {number}")
    return number


def ready(fd: int, events: int, timeout: Optional[float]) -> bool:
    """Wait for *events* on *fd*; False if *timeout* seconds passed first."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, events)
        return bool(poller.poll(None if timeout is None else max(int(timeout * 1000), 1)))
    # Windows: select() takes sockets only, which is what a dest is there.
    want_read = events & POLLIN
    r, w, _ = select.select([fd] if want_read else [], [] if want_read else [fd], [], timeout)
    return bool(r or w)


def wait_readable(obj: Any) -> None:
    """Wait until a non-blocking source whose read() returned None has data."""
    try:
        fd = obj.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd < 0 or not hasattr(select, "poll"):
        time.sleep(BACKOFF)  # nothing to poll: back off briefly rather than spin
        return
    ready(fd, POLLIN, None)
