"""fastwrap for asyncio servers: send a file on a connection, awaitably, zero-copy.

:func:`sendfile` drives a :class:`fastwrap.Transmission` (sendfile, splice,
or send-from-memory, whichever fits) on a connection, so that a slow client
holds only its own task.  It works on the default event loop and on uvloop,
and takes either end a server holds:

- an ``asyncio.StreamWriter`` (``asyncio.start_server``, ``open_connection``)
  or its transport: whatever the transport still buffers (the headers written
  with ``writer.write``) leaves first, then the file is sent on a duplicate of
  the transport's socket, with the transport's reading paused meanwhile;
- a non-blocking socket the server owns (from ``sock_accept``).

Between steps the task waits on the loop for what the transmission waits
for: the socket to be writable (``add_writer``), a non-blocking source such
as a pipe to have data (``add_reader``), or, for a file whose next bytes are
not in the page cache, one of a few worker threads to read them in (as
nginx's ``aio threads`` do): the loop itself never waits for the disk.

Example: a tiny HTTP server answering every request with one file::

    import asyncio, os
    import fastwrap.asyncio

    async def handle(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")                 # the request (ignored)
        with open("big.iso", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            writer.write(f"HTTP/1.1 200 OK\\r\\nContent-Length: {size}\\r\\n"
                         "Connection: close\\r\\n\\r\\n".encode())
            await fastwrap.asyncio.sendfile(writer, f)
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 8000)
        async with server:
            await server.serve_forever()

    asyncio.run(main())

What cannot be sent on is refused before the first byte, with one line
saying why: a TLS transport (the kernel cannot encrypt; write the bytes
through the writer instead), a transport that is closing, one that is not
over a stream socket (pipes, datagrams), and the socket an asyncio transport
owns (``get_extra_info("socket")``: pass the writer or the transport).
Nothing else may write to the connection until :func:`sendfile` returns.
The caller keeps ownership of the connection and of the source (close both
yourself).  A source that blocks on reading (a pipe in blocking mode) would
block the loop: make pipes non-blocking (``os.set_blocking(fd, False)``).

:func:`read` is for servers that must copy a file instead (TLS): it reads a
piece without holding the loop on the disk or on an empty pipe.
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import weakref
from typing import Any, Callable, Optional, Tuple, TypeVar

import fastwrap
from fastwrap.serving import BACKOFF, RESIDENT_WINDOW, fetch_pool

__all__ = ["drive", "read", "sendfile"]

# Looked up at call time, so a test can point the helper at either engine.
_Transmission = fastwrap.Transmission

_T = TypeVar("_T")


async def sendfile(dest: Any, source: Any, count: Optional[int] = None,
                   headers: bytes = b"", *,
                   loop: Optional[asyncio.AbstractEventLoop] = None,
                   on_done: Optional[Callable[[str, int], None]] = None) -> int:
    """Send *headers*, then *source* from its position (at most *count* bytes), on *dest*.

    *dest* is an ``asyncio.StreamWriter``, a transport over a TCP or Unix
    stream socket, or a non-blocking socket the caller owns.  *source* is a
    :class:`fastwrap.FileWrapper`, a binary file, an mmap, a bytes-like
    object or a BytesIO.  Returns the body bytes sent (headers not
    included); fewer than *count* when the source ended first.  A file
    source is left just after the last byte sent, also when the task is
    cancelled or the peer goes away: then the wait is undone, any disk read
    in progress finished, the transmission closed and the transport's
    reading resumed before the exception (``CancelledError``,
    ``ConnectionError``...) propagates.

    *on_done*, if given, is called once the transmission has ended (also
    when it failed), with the path that carried the body (``"sendfile"``,
    ``"splice"``...) and the body bytes sent: for a server's log line.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    transport = _transport_of(dest)
    if transport is None:
        gettimeout = getattr(dest, "gettimeout", None)
        if gettimeout is not None and gettimeout() != 0:
            raise ValueError("dest must be a non-blocking socket (sock.setblocking(False)): "
                             "a blocking send would stall the event loop")
        return await _send(loop, dest, source, count, headers, None, on_done)
    sock = _socket_under(transport)
    try:
        return await _send(loop, sock, source, count, headers, transport, on_done)
    finally:
        sock.close()


async def read(file: Any, size: int, *,
               loop: Optional[asyncio.AbstractEventLoop] = None) -> bytes:
    """Up to *size* bytes of *file* from its position; ``b""`` at its end.

    The bytes of a regular file that are in the page cache are read at once;
    the others by one of the worker threads, so the loop never waits for the
    disk.  A non-blocking file with nothing yet (an empty pipe) is waited for
    with the loop's ``add_reader``.  For servers that cannot send a file
    zero-copy (TLS) and copy it in pieces.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    fd = _fileno(file)
    if fd >= 0 and size > 0:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            position = file.tell()
            want = min(size, st.st_size - position)
            if want > 0 and not _cached(file, fd, position, want, st.st_size):
                try:
                    return bytes(await _off_loop(loop, file.read, size))
                except asyncio.CancelledError:
                    file.seek(position)  # what was read went nowhere
                    raise
    while True:
        try:
            chunk = file.read(size)
        except BlockingIOError:  # a buffered reader over a non-blocking pipe
            chunk = None
        if chunk is not None:
            return bytes(chunk)
        if fd < 0:
            await asyncio.sleep(BACKOFF)
        else:
            await _ready(loop, fd, writing=False)


# Per file read(): the span last found in the page cache, so that a file
# copied in pieces is probed once per window rather than once per piece
# (the probe of a piece cost a tenth of encrypting it).
_resident_spans: "weakref.WeakKeyDictionary[Any, Tuple[int, int]]" = weakref.WeakKeyDictionary()


def _cached(file: Any, fd: int, position: int, want: int, size: int) -> bool:
    """Whether the *want* bytes of *file* from *position* can be read without the disk."""
    try:
        start, end = _resident_spans.get(file, (0, 0))
    except TypeError:  # a file object that cannot be weakly referenced: probe every piece
        return fastwrap.resident(fd, position, want) >= want
    if start <= position and position + want <= end:
        return True
    found = fastwrap.resident(fd, position, min(size - position, RESIDENT_WINDOW))
    _resident_spans[file] = (position, position + found)
    return found >= want


# -- the connection --------------------------------------------------------------------------

def _transport_of(dest: Any) -> Any:
    """The transport under *dest*, or None for a socket (or descriptor) of the caller's."""
    if isinstance(dest, asyncio.StreamWriter):
        return dest.transport
    # uvloop's transports are not asyncio.Transport subclasses: recognised by their methods.
    if hasattr(dest, "get_extra_info") and hasattr(dest, "is_closing"):
        return dest
    return None


def _socket_under(transport: Any) -> socket.socket:
    """A non-blocking duplicate of *transport*'s socket, or why there can be none.

    The loop watches only descriptors no transport owns; a duplicate also
    stays ours if the transport closes its descriptor meanwhile.
    """
    _check_open(transport)
    # uvloop reports the raw socket under a TLS transport too: ask about TLS first.
    if transport.get_extra_info("sslcontext") is not None:
        raise ValueError("dest is a TLS transport: the kernel cannot encrypt what it sends; "
                         "write the file's bytes through it (writer.write(), then "
                         "await writer.drain())")
    raw = transport.get_extra_info("socket")
    # uvloop's pipe transports report their pipe as a "socket".
    if (raw is None or raw.type != socket.SOCK_STREAM
            or not stat.S_ISSOCK(os.fstat(raw.fileno()).st_mode)):
        raise ValueError("dest must be the transport of a TCP or Unix stream socket, "
                         f"got {type(transport).__name__}")
    sock = socket.fromfd(raw.fileno(), raw.family, raw.type, raw.proto)
    sock.setblocking(False)
    return sock


def _check_open(transport: Any) -> None:
    if transport.is_closing():
        raise ConnectionAbortedError(errno.ECONNABORTED,
                                     "the transport is closing: the connection is going away")


def _check_watchable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Refuse a descriptor the loop will not wait on: before the first byte, not at the first wait."""
    try:
        loop.add_writer(fd, _nothing)
    except RuntimeError:  # "File descriptor 7 is used by transport"
        raise ValueError("dest is the socket of an asyncio transport (get_extra_info('socket')): "
                         "pass the StreamWriter or the transport instead") from None
    loop.remove_writer(fd)


def _nothing() -> None:
    pass


# -- driving a transmission ------------------------------------------------------------------

async def _send(loop: asyncio.AbstractEventLoop, sock: Any, source: Any, count: Optional[int],
                headers: bytes, transport: Any,
                on_done: Optional[Callable[[str, int], None]]) -> int:
    tx = _Transmission(source, sock, count, headers, nowait=True)
    fd = sock if isinstance(sock, int) else sock.fileno()
    paused = False
    try:
        if transport is None:
            # What sock_accept returns is the caller's; anything else (the
            # wrapper get_extra_info("socket") returns, a bare descriptor)
            # may be a transport's, on which the loop refuses to wait.
            if not isinstance(sock, socket.socket):
                _check_watchable(loop, fd)
        else:
            # What the transport buffers (headers written to the writer) goes first.
            while transport.get_write_buffer_size():
                paused = paused or _pause(transport)
                # The transport writes whenever the socket is writable; so do we wake.
                await _ready(loop, fd, writing=True)
                _check_open(transport)

        def before_wait() -> None:
            nonlocal paused
            if transport is not None:
                paused = paused or _pause(transport)

        await _drive(loop, tx, before_wait,
                     None if transport is None else lambda: _check_open(transport))
        sent: int = tx.sent
        return sent
    finally:
        if on_done is not None:
            on_done(tx.path, tx.sent)
        tx.close()
        if paused and not transport.is_closing():
            transport.resume_reading()


async def drive(transmission: Any, *,
                loop: Optional[asyncio.AbstractEventLoop] = None) -> int:
    """Drive *transmission* to its end on the loop; return the body bytes it sent.

    For a server that owns its non-blocking sockets and steps a
    ``Transmission(..., nowait=True)`` itself, and hands over only the ones
    that must wait: between steps this waits, as :func:`sendfile` does, for
    the socket to be writable, a pipe to have data, or a worker thread of
    :func:`fastwrap.serving.fetch_pool` to read a cold window in.  The
    caller keeps ownership: it closes the transmission, also when this
    raises (``ConnectionError``) or is cancelled (a disk read in progress
    has finished by then).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    await _drive(loop, transmission, None, None)
    sent: int = transmission.sent
    return sent


async def _drive(loop: asyncio.AbstractEventLoop, tx: Any,
                 before_wait: Optional[Callable[[], None]],
                 after_wait: Optional[Callable[[], None]]) -> None:
    while not tx.done:
        try:
            tx.send()
        except BlockingIOError:
            pass
        waiting = tx.waiting
        if waiting is None:  # done, or more can go at once: let other tasks in first
            if not tx.done:
                await asyncio.sleep(0)
            continue
        if before_wait is not None:
            before_wait()
        if waiting.event == "disk":
            await _off_loop(loop, tx.fetch)
        elif waiting.fd < 0:
            await asyncio.sleep(BACKOFF)  # a source with nothing to poll
        else:
            await _ready(loop, waiting.fd, writing=waiting.event == "write")
        if after_wait is not None:
            after_wait()


def _pause(transport: Any) -> bool:
    """Pause *transport*'s reading if it reads; whether this did.

    Nothing the protocol does with incoming bytes (uvicorn answers a bad
    pipelined request at once) may write to the transport while fastwrap
    owns its socket.
    """
    if not transport.is_reading():
        return False
    transport.pause_reading()
    return True


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, writing: bool) -> None:
    """Wait until *fd* is writable (or readable)."""
    waiter = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if writing:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await waiter
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


# -- the worker threads ----------------------------------------------------------------------

# Cold windows are read by fastwrap.serving.fetch_pool(), shared with every server.


async def _off_loop(loop: asyncio.AbstractEventLoop, function: Callable[..., _T],
                    *args: Any) -> _T:
    """``function(*args)`` in a worker thread; returns (or raises) only once it has.

    Also when the task is cancelled meanwhile: what the call works on (the
    transmission, the file) must stay open until it returns; the
    cancellation propagates then.
    """
    call = asyncio.wrap_future(fetch_pool().submit(function, *args), loop=loop)
    cancelled: Optional[BaseException] = None
    while not call.done():
        try:
            await asyncio.wait((call,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    return call.result()


def _fileno(file: Any) -> int:
    try:
        return int(file.fileno())
    except (AttributeError, OSError, ValueError):
        return -1
