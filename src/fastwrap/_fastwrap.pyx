# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""The compiled engine: FileWrapper and Transmission with their loops in C.

Every decision (path, start, length, fallback) comes from fastwrap._plan,
shared with the pure-Python twin; this module moves bytes.  The one
exception is the commonest case, a plain file to a plain socket, which is
recognised here in C (``_adopt_plain_file``) because building a plan in
Python costs more than the sendfile(2) of a small file; the shared suite
holds it to the plan's answers.  The GIL is
released around every call that can block, EINTR is retried after checking
for Python signals, and EAGAIN is waited out with poll() for at most the
socket's timeout.

Free-threading compatible: the statistics are counted under a lock and the
path registry is a set (atomic in either build), a FileWrapper's own state
changes under a critical section of the wrapper, and a Transmission admits
one thread at a time (``fw_claim``).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t

import errno as _errno
import io as _io
import mmap as _mmap
import os as _os
import socket as _socket
import stat as _stat

from fastwrap import _plan, _response
from fastwrap._stats import record as _stats_record
from fastwrap._paths import MMAP, READ, READINTO, SENDFILE, SPLICE, _disabled, log as _log

try:
    from ssl import SSLWantReadError as _SSLWantRead, SSLWantWriteError as _SSLWantWrite
except ImportError:
    _SSLWantRead = _SSLWantWrite = ()

cdef extern from "_platform.h" nogil:
    int FW_HAVE_SENDFILE
    int FW_HAVE_SPLICE
    int64_t FW_MAX_CALL
    int64_t FW_PIPE_CHUNK
    int POLLIN
    int POLLOUT
    ctypedef struct fw_sigpipe_guard:
        int active
    Py_ssize_t fw_sendfile(int out_fd, int in_fd, int64_t *offset, int64_t count)
    Py_ssize_t fw_splice(int in_fd, int out_fd, int64_t count, int more)
    Py_ssize_t fw_write(int fd, const char *buf, int64_t count, int is_socket, int more)
    int fw_poll(int fd, int events, int timeout_ms)
    int fw_would_block(int err)
    int fw_pipe(int *fds)
    void fw_close_pipe(int *fds)
    void fw_push(int fd)
    void fw_sigpipe_block(fw_sigpipe_guard *g)
    void fw_sigpipe_restore(fw_sigpipe_guard *g)
    int fw_regular_size(int fd, int64_t *size)
    int64_t fw_lseek(int fd, int64_t offset, int whence)
    int64_t fw_resident(int fd, int64_t offset, int64_t length)
    int fw_claim(long *flag)
    void fw_unclaim(long *flag)
    int FW_WAIT_DISK
    int64_t FW_RESIDENT_WINDOW
    int SEEK_CUR
    int SEEK_SET

IMPLEMENTATION = "cython"

if FW_RESIDENT_WINDOW != _plan.RESIDENT_WINDOW or FW_WAIT_DISK != _plan.WAIT_DISK:
    raise ImportError("fastwrap._fastwrap was built against another fastwrap._plan; rebuild it")

SUPPORTED_PATHS = frozenset(
    path for path, present in (
        (SENDFILE, FW_HAVE_SENDFILE),
        (SPLICE, FW_HAVE_SPLICE),
        (MMAP, True),
        (READINTO, True),
        (READ, True),
    ) if present
)

cdef int TLS_CHUNK = 256 * 1024
cdef enum:
    P_SENDFILE, P_SPLICE, P_MMAP, P_READINTO, P_READ

_PATH_CODES = {SENDFILE: P_SENDFILE, SPLICE: P_SPLICE, MMAP: P_MMAP,
               READINTO: P_READINTO, READ: P_READ}
_PATH_NAMES = (SENDFILE, SPLICE, MMAP, READINTO, READ)  # in P_* order
_FileIO = _io.FileIO
_BufferedReader = _io.BufferedReader
_Socket = _socket.socket


def select_path(source, dest):
    """The path a transmission of *source* to *dest* would take now."""
    return _plan.select_path(source, dest, SUPPORTED_PATHS)


def available_paths():
    """The paths this engine can use on this platform, less the disabled ones."""
    return _plan.available_paths(SUPPORTED_PATHS)


def resident(file, offset, length):
    """How many of the *length* bytes of *file* from *offset* are in the page cache.

    Counted up to the first page that is not: fewer than *length* means that
    reading on would wait for the disk (an event loop reads those in a worker
    thread).  *file* is a descriptor or has ``fileno()``.  Where residency
    cannot be probed (no ``mincore``), every byte counts as resident.
    """
    return _plan.resident(_resident_window, file, offset, length)


def _resident_window(int fd, int64_t offset, int64_t length):
    return fw_resident(fd, offset, length)


cdef inline int _raise_errno(int err) except -1:
    raise OSError(err, _os.strerror(err))


cdef class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file in blksize chunks, or transmit it."""

    cdef public object filelike
    cdef public Py_ssize_t blksize
    cdef dict __dict__  # servers and frameworks hang attributes on wrappers
    cdef object __weakref__
    cdef bint _closed
    cdef bint _is_memory      # a bytes-like object: the wrapper keeps the position
    cdef bint _holds_buffer   # _memory is ours to release
    cdef Py_buffer _memory
    cdef Py_ssize_t _position

    def __cinit__(self):
        self._is_memory = False
        self._holds_buffer = False

    def __init__(self, filelike, blksize=_plan.DEFAULT_BLKSIZE):
        _plan.check_filelike(filelike)
        self.blksize = _plan.check_blksize(blksize)
        self.filelike = filelike
        self._closed = False
        self._position = 0
        self._release_buffer()
        self._is_memory = False
        if not isinstance(filelike, _mmap.mmap) and not hasattr(filelike, "read"):
            PyObject_GetBuffer(_plan.byte_view(filelike), &self._memory, PyBUF_SIMPLE)
            self._is_memory = True
            self._holds_buffer = True

    def __dealloc__(self):
        self._release_buffer()

    cdef _release_buffer(self):
        if self._holds_buffer:
            PyBuffer_Release(&self._memory)
            self._holds_buffer = False

    @property
    def closed(self):
        return self._closed

    def __iter__(self):
        return self

    def __next__(self):
        if self._is_memory:
            with cython.critical_section(self):
                chunk = self._next_in_memory()
        else:
            if self._closed:
                raise ValueError("I/O operation on closed FileWrapper")
            chunk = _plan.read_chunk(self.filelike, self.blksize)
        if not chunk:
            raise StopIteration
        return chunk

    cdef bytes _next_in_memory(self):
        cdef Py_ssize_t n
        if self._closed:
            raise ValueError("I/O operation on closed FileWrapper")
        n = min(self.blksize, self._memory.len - self._position)
        if n <= 0:
            return b""
        chunk = PyBytes_FromStringAndSize(<char *>self._memory.buf + self._position, n)
        self._position += n
        return chunk

    def close(self):
        """Close the wrapped object (once), through its ``close`` of this moment."""
        with cython.critical_section(self):
            if self._closed:
                return
            self._closed = True
            self._release_buffer()
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    cdef _check_open_memory(self):
        if self._closed:
            raise ValueError("I/O operation on closed FileWrapper")

    def seekable(self):
        if self._is_memory:
            self._check_open_memory()
            return True
        seekable = getattr(self.filelike, "seekable", None)
        return bool(seekable()) if seekable is not None else False

    def tell(self):
        if self._is_memory:
            self._check_open_memory()
            return self._position
        return self.filelike.tell()

    def seek(self, offset, whence=0):
        if not self._is_memory:
            return self.filelike.seek(offset, whence)
        with cython.critical_section(self):
            self._check_open_memory()
            base = (0, self._position, self._memory.len)[whence]
            position = base + offset
            if position < 0:
                raise ValueError(f"negative seek position {position}")
            self._position = position
        return position

    def transmit(self, dest, count=None, headers=b""):
        """Send the file to *dest* from its current position; return body bytes sent."""
        return (<Transmission>Transmission(self, dest, count, headers))._run()


cdef class Transmission:
    """A transmission that advances one non-blocking step at a time."""

    cdef object _plan
    cdef readonly int64_t sent
    cdef readonly bint done
    cdef int _path
    cdef int _dest_fd
    cdef int _src_fd
    cdef bint _is_socket
    cdef bint _tls
    cdef bint _src_is_pipe
    cdef int64_t _length
    cdef int64_t _offset
    # headers still to send
    cdef object _prefix
    cdef bint _prefix_more
    # body bytes read but not yet sent, and the memory of the mmap path
    cdef object _pending
    cdef Py_buffer _pend
    cdef bint _have_pend
    cdef Py_ssize_t _pend_off
    cdef Py_buffer _mem
    cdef bint _have_mem
    cdef object _buffer
    cdef int _pipe[2]
    cdef int64_t _in_pipe
    cdef bint _blocked
    cdef int64_t _moved
    cdef int _wait_fd
    cdef int _wait_events
    cdef bint _has_sock         # dest is a socket object: its timeout applies
    cdef bint _nowait           # never wait for the disk in a step: report it
    cdef bint _on_disk          # the source is a regular file: what nowait probes
    cdef int64_t _resident_end  # the file is known to be in the page cache up to here
    cdef int64_t _step_start    # sent when the current step began
    cdef object _timeout
    # Set by _adopt_plain_file, which builds no plan: what finishing needs,
    # and what a plan built late (to fall back) is built from.
    cdef object _keeper
    cdef int64_t _start
    cdef object _args
    cdef long _busy             # a thread is inside send(), run(), fetch() or close()

    def __cinit__(self):
        self._pipe[0] = -1
        self._pipe[1] = -1
        self._have_pend = False
        self._have_mem = False
        self.done = True  # until __init__ has a plan

    def __init__(self, source, dest, count=None, headers=b"", *, nowait=False):
        self.sent = 0
        self.done = False
        self._nowait = nowait
        self._resident_end = 0
        if not self._adopt_plain_file(source, dest, count):
            self._adopt(_plan.Plan(source, dest, count, SUPPORTED_PATHS))
        self._prefix = headers if type(headers) is bytes else _plan.check_headers(headers)
        self._prefix_more = False
        if self._length == 0 and not self._prefix:
            self._finish()

    def __dealloc__(self):
        self._release()

    cdef bint _adopt_plain_file(self, source, dest, count) except -1:
        """Take the sendfile path for a plain file and a plain socket without a plan.

        Recognises exactly what _plan.Plan would send by sendfile from its
        ``tell()`` (a FileIO, or a BufferedReader over one, read-only and
        regular with a size, alone or in a FileWrapper, to a socket.socket)
        and answers False for anything else, the plan then deciding.  Debug
        logging, which the plan does, also leaves the choice to the plan.
        """
        cdef int64_t size
        cdef int src_fd, dest_fd
        if not FW_HAVE_SENDFILE or SENDFILE in _disabled or _log.isEnabledFor(10):
            return False
        if count is not None and (type(count) is not int or count < 0):
            return False  # the plan raises the error
        if type(dest) is not _Socket:
            return False
        cls = type(source)
        if cls is FileWrapper:
            if (<FileWrapper>source)._closed or (<FileWrapper>source)._is_memory:
                return False
            obj = (<FileWrapper>source).filelike
        elif cls is _FileIO or cls is _BufferedReader:
            obj = source
        elif _plan._is_wsgiref_wrapper(source):
            obj = source.filelike
        else:
            return False
        cls = type(obj)
        if not (cls is _FileIO or (cls is _BufferedReader and type(obj.raw) is _FileIO)):
            return False
        if obj.closed or not obj.readable() or obj.writable():
            return False  # closed: the plan raises; writable: it flushes first
        dest_fd = dest.fileno()
        src_fd = obj.fileno()
        if dest_fd < 0 or fw_regular_size(src_fd, &size) != 1 or size <= 0:
            return False
        # A FileIO's position is its descriptor's (it buffers nothing): read
        # it here, without the GIL handoff FileIO.tell() would cost.
        start = fw_lseek(src_fd, 0, SEEK_CUR) if cls is _FileIO else obj.tell()
        if start < 0:
            _raise_errno(errno)
        length = max(size - start, 0)
        if count is not None:
            length = min(length, count)
        self._plan = None
        self._args = (source, dest, count)
        self._keeper = obj
        self._start = start
        self._path = P_SENDFILE
        self._dest_fd = dest_fd
        self._src_fd = src_fd
        self._is_socket = True
        self._tls = False
        self._src_is_pipe = False
        self._on_disk = True
        self._length = length
        self._offset = start
        self._wait_fd = dest_fd
        self._wait_events = POLLOUT
        self._has_sock = True
        self._timeout = dest.gettimeout()
        return True

    cdef object _full_plan(self):
        if self._plan is None:
            source, dest, count = self._args
            self._plan = _plan.Plan(source, dest, count, SUPPORTED_PATHS)
            self._keeper = None
        return self._plan

    cdef _adopt(self, plan):
        self._release_memory()
        self._plan = plan
        self._keeper = None
        self._has_sock = plan.dest.sock is not None
        self._timeout = plan.dest.timeout
        self._path = _PATH_CODES[plan.path]
        self._dest_fd = plan.dest.fd
        self._src_fd = plan.src_fd
        self._is_socket = plan.dest.is_socket
        self._tls = plan.dest.tls
        self._src_is_pipe = _stat.S_ISFIFO(plan.src.mode)
        self._on_disk = plan.on_disk
        self._length = plan.length
        self._offset = plan.start
        self._wait_fd = self._dest_fd
        self._wait_events = POLLOUT
        if self._path == P_MMAP and not self._tls:
            PyObject_GetBuffer(plan.memory, &self._mem, PyBUF_SIMPLE)
            self._have_mem = True

    @property
    def path(self):
        """The path carrying the body: sendfile, splice, mmap, readinto or read."""
        return _PATH_NAMES[self._path]

    @property
    def waiting(self):
        """What the last step stopped on (a Wait of fd and event), or None.

        None: the transmission is done, or ``send()`` can go on at once.
        Otherwise wait for ``event`` on ``fd`` before the next ``send()``:
        ``"write"``, ``"read"``, or ``"disk"`` (run :meth:`fetch` off the loop).
        """
        if self.done or not self._blocked:
            return None
        return _plan.waiting(self._wait_fd, self._wait_events)

    def fetch(self):
        """Read the source's next bytes into the page cache; blocks on the disk.

        For a worker thread, when ``waiting.event`` is ``"disk"``; the
        transmission must stay open until it returns.  Does nothing otherwise.
        """
        self._claim()
        try:
            self._fetch()
        finally:
            fw_unclaim(&self._busy)

    def send(self):
        """Do one non-blocking step; return the bytes (headers included) it sent.

        Raises BlockingIOError when nothing could be sent.  After any step,
        ``waiting`` says what the next one needs first.
        """
        cdef int64_t moved
        self._claim()
        try:
            moved = self._step()
        finally:
            fw_unclaim(&self._busy)
        if moved == 0 and self._blocked and not self.done:
            raise BlockingIOError(_errno.EAGAIN, "no bytes could be sent now")
        return moved

    def run(self):
        """Drive the transmission to its end on a blocking *dest*; return body bytes sent.

        Waits for the destination as long as its timeout allows, and closes
        the transmission however it ends.
        """
        return self._run()

    def close(self):
        """Stop: leave the source just after the last byte sent, free the pipe."""
        self._claim()
        try:
            self._close()
        finally:
            fw_unclaim(&self._busy)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- driving -------------------------------------------------------------

    cdef inline int _claim(self) except -1:
        if not fw_claim(&self._busy):
            raise _plan.in_use_error()
        return 0

    cdef int _fetch(self) except -1:
        if self.done or not self._blocked or self._wait_events != FW_WAIT_DISK:
            return 0
        _plan.fetch(self._src_fd, self._file_position(), self._window())
        return 0

    cdef int64_t _run(self) except -1:
        """Drive the transmission to its end, waiting as the dest's timeout allows."""
        cdef int timeout_ms = -1
        cdef int rc, err
        self._claim()
        try:
            timeout = self._timeout
            _plan.check_timeout(self._has_sock, timeout)
            if timeout is not None:
                timeout_ms = <int>min(max(timeout * 1000.0, 1.0), 2147483647.0)
            while not self.done:
                self._step()
                if self.done or not self._blocked:
                    continue
                if self._wait_events == FW_WAIT_DISK:
                    self._fetch()  # blocking anyway: read the cold bytes here
                    continue
                with nogil:
                    # poll() ignores a negative descriptor and only sleeps.
                    rc = fw_poll(self._wait_fd, self._wait_events,
                                 1 if self._wait_fd < 0 else timeout_ms)
                    err = errno
                if rc == 0 and self._wait_fd >= 0:
                    raise TimeoutError(_plan.timeout_message(
                        timeout, self._wait_fd == self._dest_fd))
                if rc < 0:
                    if err != EINTR:
                        _raise_errno(err)
                    PyErr_CheckSignals()
                self._wait_fd = self._dest_fd
                self._wait_events = POLLOUT
        except _socket.timeout as exc:  # an alias of TimeoutError from 3.10
            raise TimeoutError(*exc.args) from None
        finally:
            self._close()
            fw_unclaim(&self._busy)
        return self.sent

    cdef int64_t _step(self) except -1:
        cdef fw_sigpipe_guard guard
        if self.done:
            return 0
        self._blocked = False
        self._moved = 0
        self._step_start = self.sent
        fw_sigpipe_block(&guard)
        try:
            if self._prefix:
                self._send_prefix()
            while not self._prefix and not self.done:
                try:
                    self._body()
                    break
                except BlockingIOError:  # from the source: a buffered reader's peek()
                    self._would_block(self._src_fd, POLLIN)
                    break
                except OSError as exc:
                    successor = self._full_plan().fallback(exc, self.sent)
                    if successor is None:
                        raise
                    self._take_back_pipe()
                    self._adopt(successor)
        except BaseException:
            self._close()
            raise
        finally:
            fw_sigpipe_restore(&guard)
        return self._moved

    cdef int _take_back_pipe(self) except -1:
        # Bytes already moved from the source into the intermediate pipe
        # must go first on the next path, or they would be lost.
        if self._in_pipe == 0:
            return 0
        data = bytearray()
        while len(data) < self._in_pipe:
            data += _os.read(self._pipe[0], self._in_pipe - len(data))
        self._in_pipe = 0
        self._hold(data)
        return 0

    cdef int _body(self) except -1:
        if self._path == P_SENDFILE:
            return self._sendfile()
        if self._path == P_SPLICE:
            return self._splice()
        if self._path == P_MMAP:
            return self._memory()
        return self._read_loop(self._path == P_READINTO)

    # -- bookkeeping -------------------------------------------------------------

    cdef inline int64_t _remaining(self):
        return -1 if self._length < 0 else self._length - self.sent

    cdef inline int64_t _file_position(self):
        # sendfile(2) moves _offset itself; the other paths start from it.
        return self._offset if self._path == P_SENDFILE else self._offset + self.sent

    cdef inline int64_t _window(self):
        """How much of a regular file a nowait step probes, or a fetch reads."""
        cdef int64_t remaining = self._remaining()
        return FW_RESIDENT_WINDOW if remaining < 0 else min(remaining, FW_RESIDENT_WINDOW)

    cdef int64_t _resident(self) except -2:
        """Bytes from the file position that can be read without the disk.

        0: wait for the disk.  -1: end the step here, at the end of a window
        it sent from, so that an event loop runs its other tasks between
        windows: a fast reader could otherwise take a whole file in one
        step, and a step is at most a window.  A probe covers a window, and a
        step often sends far less (what the socket takes): the next steps
        send from the same probe.
        """
        cdef int64_t position = self._file_position()
        if position >= self._resident_end:
            if self.sent > self._step_start:
                return -1
            self._resident_end = position + fw_resident(self._src_fd, position, self._window())
        if self._resident_end == position:
            self._would_block(self._src_fd, FW_WAIT_DISK)
        return self._resident_end - position

    cdef int _advance(self, int64_t n) except -1:
        self._moved += n
        self.sent += n
        if self.sent == self._length:
            self._finish()
        return 0

    cdef int _finish(self) except -1:
        if self._prefix_more and self.sent == 0:
            fw_push(self._dest_fd)
        self._close()
        return 0

    cdef int _would_block(self, int fd, int events) except -1:
        self._blocked = True
        self._wait_fd = fd
        self._wait_events = events
        return 0

    cdef int _failed(self, int err, int fd, int events) except -1:
        """After a failed call: 0 to try again, 1 if it would block; else raise."""
        if err == EINTR:
            PyErr_CheckSignals()  # a handler that raises ends the transmission
            return 0
        if fw_would_block(err):
            self._would_block(fd, events)
            return 1
        _raise_errno(err)

    cdef _release_memory(self):
        if self._have_mem:
            PyBuffer_Release(&self._mem)
            self._have_mem = False

    cdef _release(self):
        self._release_memory()
        if self._have_pend:
            PyBuffer_Release(&self._pend)
            self._have_pend = False
        fw_close_pipe(self._pipe)

    cdef _close(self):
        if self.done and self._pipe[0] < 0:
            return
        self._release()
        if not self.done:
            self.done = True
            unsent = self._pending
            self._pending = None
            if unsent is not None and self._path in (P_READ, P_READINTO):
                _unread(self._plan.reader, len(unsent) - self._pend_off)
            if self._plan is None:
                keeper, self._keeper = self._keeper, None
                if type(keeper) is _FileIO and not keeper.closed:
                    # What _plan.finished does, with the seek in C (see above).
                    if fw_lseek(self._src_fd, self._start + self.sent, SEEK_SET) < 0:
                        _raise_errno(errno)
                    _stats_record(SENDFILE, self.sent)
                else:
                    _plan.finished(SENDFILE, self.sent, keeper, self._start)
            else:
                self._plan.finish(self.sent)

    # -- writing -------------------------------------------------------------

    cdef int64_t _write(self, const char *buf, int64_t count, bint more) except -2:
        """One write to dest: bytes written, or -1 if it would block."""
        cdef Py_ssize_t n
        cdef int err
        while True:
            with nogil:
                n = fw_write(self._dest_fd, buf, count, self._is_socket, more)
                err = errno
            if n >= 0:
                PyErr_CheckSignals()
                return n
            if self._failed(err, self._dest_fd, POLLOUT):
                return -1

    cdef int64_t _tls_send(self, view) except -2:
        """One TLS write: bytes written, or -1 if it would block."""
        try:
            return self._plan.dest.sock.send(view)
        except _SSLWantWrite:
            self._would_block(self._dest_fd, POLLOUT)
        except _SSLWantRead:
            self._would_block(self._dest_fd, POLLIN)
        except BlockingIOError:
            self._would_block(self._dest_fd, POLLOUT)
        return -1

    cdef int64_t _send_prefix(self) except -1:
        cdef int64_t n
        cdef const unsigned char[::1] prefix = self._prefix
        more = self._length != 0 and self._is_socket and not self._tls
        if self._tls:
            n = self._tls_send(self._prefix)
        else:
            # MSG_MORE holds the headers back to leave with the first body bytes.
            n = self._write(<const char *>&prefix[0], prefix.shape[0], more)
        if n < 0:
            return 0
        self._moved += n
        self._prefix_more = more
        self._prefix = self._prefix[n:]
        if not self._prefix and self._length == 0:
            self._finish()
        return n

    cdef int _hold(self, obj) except -1:
        """Make obj the pending body bytes (they must all leave before more are read)."""
        if self._have_pend:
            PyBuffer_Release(&self._pend)
            self._have_pend = False
        self._pending = obj
        self._pend_off = 0
        PyObject_GetBuffer(obj, &self._pend, PyBUF_SIMPLE)
        self._have_pend = True
        return 0

    cdef int _flush_pending(self) except -1:
        """Send the bytes already read; 1 if some are still waiting to go."""
        cdef int64_t n
        while self._pending is not None and not self.done:
            if self._pend_off == self._pend.len:
                break
            if self._tls:
                n = self._tls_send(memoryview(self._pending)[self._pend_off:])
            else:
                n = self._write(<const char *>self._pend.buf + self._pend_off,
                                self._pend.len - self._pend_off, False)
            if n < 0:
                return 1
            self._pend_off += n
            self._advance(n)
        if self._have_pend and (self.done or self._pend_off == self._pend.len):
            PyBuffer_Release(&self._pend)
            self._have_pend = False
            self._pending = None
        return 0

    # -- the paths ---------------------------------------------------------------

    cdef int _sendfile(self) except -1:
        cdef Py_ssize_t n
        cdef int64_t count
        cdef int err
        while not self.done:
            count = self._length - self.sent
            if self._nowait:
                # Only what is in the page cache: sendfile(2) of the rest
                # would hold the event loop while the disk reads it.
                count = self._resident()
                if count <= 0:
                    break
            with nogil:
                n = fw_sendfile(self._dest_fd, self._src_fd, &self._offset, count)
                err = errno
            if n > 0:
                self._advance(n)
                # Interrupted after some progress, sendfile returns a count, not EINTR.
                PyErr_CheckSignals()
            elif n == 0:  # EOF: the file is shorter than it was at the start
                self._finish()
            elif self._failed(err, self._dest_fd, POLLOUT):
                break
        return 0

    cdef int _splice(self) except -1:
        cdef int64_t want, remaining
        cdef Py_ssize_t n
        cdef int err, src_fd, dst_fd
        cdef bint refill
        plan = self._plan
        if plan.drain is not None:
            # Bytes a buffered reader already took from the pipe go first.
            reader = plan.drain
            plan.drain = None
            held = len(reader.peek())  # b"" at EOF, and from a non-blocking pipe
            remaining = self._remaining()
            want = held if remaining < 0 else min(held, remaining)
            if want:
                self._hold(reader.read(want))
                plan.drained = want
        if self._pending is not None and self._flush_pending():
            return 0
        if not self._src_is_pipe and self._pipe[0] < 0:
            if fw_pipe(self._pipe) < 0:
                _raise_errno(errno)
        while not self.done:
            remaining = self._remaining()
            want = FW_PIPE_CHUNK if remaining < 0 else min(remaining, FW_PIPE_CHUNK)
            refill = not self._src_is_pipe and self._in_pipe == 0
            if self._src_is_pipe:
                src_fd, dst_fd = self._src_fd, self._dest_fd
            elif refill:
                src_fd, dst_fd = self._src_fd, self._pipe[1]
            else:
                src_fd, dst_fd, want = self._pipe[0], self._dest_fd, self._in_pipe
            with nogil:
                # SPLICE_F_MORE only when more is known to follow: at an
                # unknown end it would hold the last bytes back.
                n = fw_splice(src_fd, dst_fd, want, remaining > want)
                err = errno
            if n > 0:
                if refill:
                    self._in_pipe = n
                    continue
                if not self._src_is_pipe:
                    self._in_pipe -= n
                self._advance(n)
                PyErr_CheckSignals()
            elif n == 0:  # EOF
                self._finish()
            elif dst_fd != self._dest_fd:
                if self._failed(err, self._src_fd, POLLIN):
                    break
            elif self._src_is_pipe and fw_would_block(err) and fw_poll(src_fd, POLLIN, 0) == 0:
                self._would_block(src_fd, POLLIN)  # the source is empty, not the dest full
                break
            elif self._failed(err, self._dest_fd, POLLOUT):
                break
        return 0

    cdef int _memory(self) except -1:
        cdef int64_t n, start
        memory = self._plan.memory
        while not self.done:
            start = self._offset + self.sent
            try:
                if self._tls:
                    n = self._tls_send(memory[start:start + min(self._remaining(), TLS_CHUNK)])
                else:
                    n = self._write(<const char *>self._mem.buf + start,
                                    self._remaining(), False)
            except OSError as exc:
                if not self._plan.source_shrank(exc):
                    raise
                self._finish()
                break
            if n < 0:
                break
            self._advance(n)
        return 0

    cdef int _read_loop(self, bint use_readinto) except -1:
        cdef int64_t remaining, want
        plan = self._plan
        reader = plan.reader
        chunk_size = plan.chunk
        if self._pending is not None and self._flush_pending():
            return 0
        while not self.done:
            remaining = self._remaining()
            want = chunk_size if remaining < 0 else min(chunk_size, remaining)
            if self._nowait and self._on_disk:
                # A read of the rest would hold the event loop on the disk.
                want = min(want, self._resident())
                if want <= 0:
                    break
            if use_readinto and self._buffer is None:
                self._buffer = memoryview(bytearray(chunk_size))
            chunk = _plan.fill(reader, self._buffer, want, remaining)
            if chunk is None:  # a non-blocking source with nothing yet
                self._wait_for_source(reader)
                break
            if len(chunk) == 0:
                self._finish()
                break
            self._hold(chunk)
            if self._flush_pending():
                break
        return 0

    cdef _wait_for_source(self, reader):
        try:
            fd = reader.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        # No descriptor to wait on: -1 makes the blocking loop back off briefly.
        self._would_block(fd, POLLIN)


def transmit_file(source, dest, count=None, headers=b""):
    """Blocking transmission of *source* (a file, buffer or FileWrapper)."""
    return (<Transmission>Transmission(source, dest, count, headers))._run()


def _unread(reader, n):
    # A chunk was read but not all of it left: put the position back after
    # the last byte sent, as the read() loop would have it.
    try:
        if n and reader.seekable():
            reader.seek(-n, _os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        pass


transmit = _response.make_transmit(transmit_file)
_plan.register_wrapper(FileWrapper)
