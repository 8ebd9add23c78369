"""fastwrap in uvicorn: file bodies leave zero-copy, through the ASGI file extensions.

Name one of the protocol classes where uvicorn takes an HTTP implementation::

    uvicorn app:app --http fastwrap.uvicorn:HttpToolsProtocol     # or :H11Protocol
    uvicorn.run("app:app", http="fastwrap.uvicorn:HttpToolsProtocol")
    gunicorn -k fastwrap.uvicorn.UvicornWorker app:app

Each class is uvicorn's own protocol for that parser, unchanged but for the
request-response cycle it creates.  That cycle advertises, in
``scope["extensions"]``, the two ASGI extensions that let an application hand
the server a file instead of its bytes:

``http.response.pathsend``
    ``{"type": "http.response.pathsend", "path": "/absolute/path"}``, sent
    after ``http.response.start``; the response is complete after it.
    Starlette's and FastAPI's ``FileResponse`` send it whenever a server
    advertises it, so their users need to change nothing; a relative path
    (``FileResponse("big.iso")``) is taken in the working directory, as the
    application took it.  Only a regular file is opened (never a FIFO, whose
    opening would wait for a writer, nor a device).  Advertised as
    ``{"ranges": True, "more_body": True}``: the message may also carry
    ``offset`` and ``count`` (a byte range), and ``"more_body": True`` to
    leave the response open (see :data:`fastwrap.asgi.PATHSEND_EXTENSION`).
    Importing this module has Starlette's ``FileResponse`` answer ``Range``
    requests with them (:mod:`fastwrap.starlette`), where its version is a
    known one.

``http.response.zerocopysend``
    ``{"type": "http.response.zerocopysend", "file": f, "offset": o,
    "count": n, "more_body": b}``: *file* is an open binary file or a
    descriptor (which stays the application's to close); without *offset*
    the bytes start at the file's position and leave it after the last byte
    sent, as ``sendfile(2)`` without an offset pointer does; with *offset* the
    position is left where it was.  Any number of these may be mixed with
    ``http.response.body`` messages.

On a plain HTTP/1.1 connection the bytes go through fastwrap's engine
(``sendfile(2)`` for a regular file) straight onto the connection's socket:

- the response head uvicorn rendered is held back for the current turn of
  the event loop, so when the file message follows at once (as Starlette's
  does) head and body leave together; otherwise the head is written as
  uvicorn would have written it, one loop turn later, byte for byte the same;
- whatever the transport still buffers (an earlier body message, a previous
  response on the connection) is flushed first;
- the bytes leave through :func:`fastwrap.asyncio.sendfile`, on a duplicate
  of the socket's descriptor (the event loop refuses to watch a descriptor
  that a transport owns), and the cycle waits on the running loop (asyncio's
  or uvloop's) for whatever the transfer waits for: the client's window
  (writability), an empty pipe (readability), or file bytes that are not in
  the page cache, which a worker thread reads in: a slow client, a slow pipe
  or a cold disk holds only its own request, never the loop; meanwhile the
  connection's reading is paused, so nothing else writes to the transport
  while fastwrap owns the socket;
- framing is uvicorn's: with a Content-Length the body is exactly
  min(Content-Length, what the file holds) bytes; without one, uvicorn has
  already chosen chunked transfer-coding at ``http.response.start`` (the
  application may send anything after it), so the file leaves as one chunk,
  its size taken from the file when the message arrives;
- a file that cannot be sent (missing, a directory, a FIFO, unreadable, or
  holding fewer bytes than the Content-Length announced) while the head is
  still held is answered as uvicorn answers an application that failed
  before starting its response: the head is dropped, uvicorn's own 500 goes
  out and the error is logged.  Once the head or any body byte has left,
  the connection is closed with nothing more, and a file that shrinks while
  it is sent ends the connection where it ended, so the client sees the
  response cut short, never a complete-looking one;
- HEAD, 1xx, 204 and 304 responses get no body, and keep-alive goes on after
  a file response exactly as after any other;
- a client that goes away mid-file ends the transfer, the connection is
  closed, ``receive()`` answers ``http.disconnect`` and ``send()`` returns
  quietly, as uvicorn does for any send after a disconnect.

On TLS the kernel cannot see the plaintext, so there is no zero-copy; the
extensions are still advertised, because the bytes can still leave through
a path that works on TLS: the file is read in 256 KiB pieces (with
:func:`fastwrap.asyncio.read`: pieces not in the page cache by a worker
thread, never on the loop) and each piece goes through uvicorn's own
``http.response.body`` handling and the TLS transport, with uvicorn's flow
control.  The head is held there too, so a file that cannot be sent is a 500
as well.  HTTP/1.0 requests do not get the extensions.  Which was chosen is
said once per worker process on uvicorn's error logger, at debug level
(``--log-level debug``).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import warnings
from typing import Any, Callable, Coroutine, Dict, Optional, Set, Tuple

import fastwrap
import fastwrap.asyncio
import fastwrap.starlette
from fastwrap import asgi
from fastwrap._optional import missing, reraise

#: What installs this module's dependencies.
_INSTALL = "pip install 'fastwrap[uvicorn]'"

try:
    from uvicorn.protocols.http import h11_impl
except ModuleNotFoundError as exc:
    raise reraise(exc, "fastwrap.uvicorn", "uvicorn", _INSTALL) from None

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # httptools is optional in uvicorn
    httptools_impl = None  # type: ignore[assignment]

import h11

__all__ = ["H11Protocol", "HttpToolsProtocol", "UvicornWorker"]

#: Why Starlette's Range answers stay Starlette's own, or None: they go zero-copy.
_STARLETTE = fastwrap.starlette.install()

PATHSEND = asgi.PATHSEND
ZEROCOPYSEND = asgi.ZEROCOPYSEND
#: The piece a file is read in where it cannot leave zero-copy.
COPY_CHUNK = asgi.COPY_CHUNK

# How a cycle sends file messages.
_ZERO_COPY = "zero-copy"
_COPY = "copy"

_announced: Set[str] = set()


# -- which path a connection gets -------------------------------------------------------

def _choose_path(transport: asyncio.BaseTransport, scope: Dict[str, Any],
                 logger: logging.Logger) -> Optional[str]:
    """_ZERO_COPY, _COPY, or None when the extensions are not advertised."""
    if scope.get("http_version") != "1.1":
        return None
    # uvloop reports the raw socket under a TLS transport too: ask about TLS first.
    if transport.get_extra_info("sslcontext") is not None:
        _announce(logger, _COPY, "TLS connection: %s and %s advertised; file bodies are read "
                  "and written through the TLS transport (the kernel cannot send to TLS)")
        return _COPY
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return None
    _announce(logger, _ZERO_COPY, "plain HTTP/1.1 connection: %s and %s advertised; "
              "file bodies leave through fastwrap's engine, zero-copy, on the socket")
    return _ZERO_COPY


def _announce(logger: logging.Logger, path: str, message: str) -> None:
    """Say once per process which path file bodies take (not once per request)."""
    if path not in _announced:
        _announced.add(path)
        logger.debug("fastwrap: " + message, PATHSEND, ZEROCOPYSEND)
        logger.debug("fastwrap: Starlette's Range answers: %s",
                     _STARLETTE or "by pathsend with offset and count")


# -- the transport the cycle writes to ----------------------------------------------------

class _HeadHolder(asyncio.Transport):
    """The connection's transport, able to hold the response head back briefly.

    uvicorn writes the head as soon as the application sends
    ``http.response.start``.  While :meth:`capture` is on, that write is
    kept here instead, so that it can leave with the file that follows; any
    other use of the transport writes it out first, so the byte stream is
    always exactly uvicorn's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.real = transport
        self.capturing = False
        self.held = b""

    def take(self) -> bytes:
        """The held head, now the caller's to send."""
        held, self.held = self.held, b""
        return held

    def flush(self) -> None:
        held = self.take()
        # A connection closed meanwhile (the client left) takes nothing more;
        # uvloop would even raise for a write on a closed handle.
        if held and not self.real.is_closing():
            self.real.write(held)

    def write(self, data: Any) -> None:
        if self.capturing:
            self.held += bytes(data)
            return
        self.flush()
        self.real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self.flush()
        self.real.write_eof()

    def close(self) -> None:
        self.flush()
        self.real.close()

    def abort(self) -> None:
        self.held = b""
        self.real.abort()

    def can_write_eof(self) -> bool:
        return self.real.can_write_eof()

    def is_closing(self) -> bool:
        return self.real.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.real.get_protocol()

    def is_reading(self) -> bool:
        return self.real.is_reading()

    def pause_reading(self) -> None:
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.real.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.real.get_write_buffer_size() + len(self.held)

    def get_write_buffer_limits(self) -> Tuple[int, int]:
        return self.real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: Optional[int] = None,
                                low: Optional[int] = None) -> None:
        self.real.set_write_buffer_limits(high, low)


# -- the cycle -----------------------------------------------------------------------------

class _FileCycle:
    """What both cycles add to uvicorn's RequestResponseCycle: the file messages.

    Everything that is not a file message, and every file message arriving
    where uvicorn would reject a body (before the start, after the end, after
    a disconnect), goes to uvicorn's own ``send``.
    """

    # Set by uvicorn's RequestResponseCycle.__init__.
    scope: Any
    transport: Any
    flow: Any
    logger: logging.Logger
    disconnected: bool
    response_started: bool
    response_complete: bool
    keep_alive: bool
    message_event: asyncio.Event
    on_response: Callable[..., None]
    send_500_response: Callable[[], Coroutine[Any, Any, None]]

    _fw_path: Optional[str]
    _fw_start: Optional[Dict[str, Any]]
    _fw_body_sent: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # uvicorn's cycle, next in the MRO
        self._fw_setup()

    def _fw_setup(self) -> None:
        self._fw_start = None
        self._fw_body_sent = 0
        self._fw_path = _choose_path(self.transport, self.scope, self.logger)
        if self._fw_path is None:
            return
        asgi.advertise(self.scope)
        self.transport = _HeadHolder(self.transport)

    async def _uvicorn_send(self, message: Any) -> None:
        raise NotImplementedError  # uvicorn's own send, in each concrete cycle

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if self._fw_path is None:
            await self._uvicorn_send(message)
        elif kind in asgi.FILE_MESSAGES and self.response_started and not self.response_complete:
            # uvicorn waits for the transport to drain before every message.
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if not self.disconnected:
                await asgi.send_file(message, self._send_source, self._fail)
        elif kind == "http.response.start" and not self.response_started:
            await self._start(message)
        else:
            if kind == "http.response.body" and self.response_started:
                self._fw_body_sent += len(message.get("body", b""))
            await self._uvicorn_send(message)

    async def _start(self, message: Any) -> None:
        """uvicorn renders the head; a zero-copy cycle holds it for this turn of the loop."""
        self._fw_start = message
        holder = self.transport
        if not isinstance(holder, _HeadHolder):
            await self._uvicorn_send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()  # so uvicorn's send below does not wait while capturing
        holder.capturing = True
        try:
            await self._uvicorn_send(message)
        finally:
            holder.capturing = False
        if holder.held:
            asyncio.get_running_loop().call_soon(holder.flush)

    # -- framing -----------------------------------------------------------------------

    def _allowance(self) -> Optional[int]:
        """Body bytes the response may still carry; None when not limited (chunked)."""
        start = self._fw_start
        assert start is not None
        return asgi.allowance(self.scope["method"], start["status"], start.get("headers", ()),
                              self._fw_body_sent)

    def _frame(self, n: int) -> Tuple[bytes, bytes]:
        """The bytes uvicorn's framing puts before and after *n* body bytes."""
        raise NotImplementedError

    # -- sending -----------------------------------------------------------------------

    async def _send_source(self, source: asgi.FileSource) -> None:
        portion = asgi.Portion(source, self._allowance())
        n = portion.n
        if portion.unfillable:
            # Known before the first byte of it leaves: the file shrank since
            # the application took its length, and the response cannot be completed.
            self.logger.warning("fastwrap: %s; %s", portion.unfillable_reason(),
                                "answering 500" if self._head_held() else "closing the connection")
            await self._fail()
            return
        if n is None or self._fw_path == _COPY:
            sent = await self._copy(source, n)
        elif n == 0:
            sent = 0
        else:
            sent = await self._zero_copy(source, n)
        if self.disconnected:
            return
        self._fw_body_sent += sent
        expected = portion.short(sent)
        if expected is not None:
            self._end_short(sent, expected)  # the file shrank, or held less than declared
            return
        if source.final:
            # uvicorn's own ending: the last chunk, keep-alive or close, the next request.
            await self._uvicorn_send({"type": "http.response.body", "body": b"",
                                      "more_body": False})

    def _head_held(self) -> bool:
        """Whether nothing of this response has left yet."""
        return isinstance(self.transport, _HeadHolder) and bool(self.transport.held)

    async def _fail(self) -> None:
        """The file cannot be sent: uvicorn's 500 if nothing has left yet, else close.

        Holding the head back is what makes the 500 possible: the head the
        application started is dropped unsent and the response is answered
        as uvicorn answers an application that failed before starting one.
        """
        if not self._head_held():
            self._close_unfinished()
            return
        self.transport.take()
        self._rewind()
        self._fw_start = None
        self._fw_body_sent = 0
        await self.send_500_response()

    def _rewind(self) -> None:
        """Put uvicorn's cycle back to before ``http.response.start``."""
        raise NotImplementedError

    async def _copy(self, source: asgi.FileSource, n: Optional[int]) -> int:
        """Read the file and send it as http.response.body messages through uvicorn."""
        sent = 0
        while n is None or sent < n:
            want = COPY_CHUNK if n is None else min(COPY_CHUNK, n - sent)
            # Never on the loop from the disk, nor from an empty pipe.
            chunk = await fastwrap.asyncio.read(source.file, want)
            if not chunk:
                break
            await self._uvicorn_send({"type": "http.response.body", "body": chunk,
                                      "more_body": True})
            if self.disconnected:
                break
            sent += len(chunk)
        return sent

    async def _zero_copy(self, source: asgi.FileSource, n: int) -> int:
        """Send *n* file bytes with uvicorn's framing, straight onto the socket."""
        holder = self.transport
        assert isinstance(holder, _HeadHolder)
        prefix, suffix = self._frame(n)
        try:
            # After what the transport buffers, on a duplicate of its socket,
            # with its reading paused: no request is parsed (and so no error
            # answered) until the body is out.
            sent = await fastwrap.asyncio.sendfile(holder.real, source.file, n,
                                                   holder.take() + prefix)
        except ConnectionError as exc:
            self._client_gone(exc)
            return 0
        if sent == n and suffix:
            holder.write(suffix)
        return sent

    def _client_gone(self, exc: BaseException) -> None:
        """The client left mid-file: end as uvicorn does when it sees the connection lost."""
        self.logger.debug("fastwrap: client gone during a file body: %r", exc)
        self.disconnected = True
        self.message_event.set()
        self.transport.close()

    def _end_short(self, sent: int, expected: Optional[int]) -> None:
        """The file ended before its framing did: the response cannot be finished."""
        self.logger.warning("fastwrap: the file ended after %d of %s body bytes; "
                            "closing the connection", sent, expected)
        self._close_unfinished()

    def _close_unfinished(self) -> None:
        """End the connection where the response stands, so the client sees it cut short."""
        self.keep_alive = False
        self.response_complete = True
        self.message_event.set()
        self.transport.close()
        self.on_response()


class H11Cycle(_FileCycle, h11_impl.RequestResponseCycle):
    """uvicorn's h11 RequestResponseCycle, plus the ASGI file messages."""

    async def _uvicorn_send(self, message: Any) -> None:
        await h11_impl.RequestResponseCycle.send(self, message)

    def _rewind(self) -> None:
        # h11 takes no response back: a connection of its own, that has read
        # a request with the same method and version, renders the next one.
        # The request's Connection headers too: h11 renders a client's "close"
        # into the response otherwise than its own.
        connection = b"".join(b"Connection: %s\r\n" % value
                              for name, value in self.scope["headers"]
                              if name.lower() == b"connection")
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"%s / HTTP/1.1\r\nHost: fastwrap\r\n%s\r\n"
                          % (self.scope["method"].encode("ascii"), connection))
        conn.next_event()
        self.conn = conn
        self.response_started = False

    def _frame(self, n: int) -> Tuple[bytes, bytes]:
        return asgi.h11_frame(self.conn, n)


def _hook_cycle(function: Callable[..., None], cycle: type) -> Callable[..., None]:
    """uvicorn's own *function*, creating *cycle* where it creates a RequestResponseCycle.

    The protocols build their cycle inline, by the module-global name
    ``RequestResponseCycle``, in the method that parses a request head
    (``on_headers_complete`` for httptools, ``handle_events`` for h11).
    """
    return asgi.rebind(function, "RequestResponseCycle", cycle, "fastwrap.uvicorn")


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol whose requests may send files zero-copy."""

    handle_events = _hook_cycle(h11_impl.H11Protocol.handle_events, H11Cycle)


if httptools_impl is not None:

    class HttpToolsCycle(_FileCycle, httptools_impl.RequestResponseCycle):
        """uvicorn's httptools RequestResponseCycle, plus the ASGI file messages."""

        async def _uvicorn_send(self, message: Any) -> None:
            await httptools_impl.RequestResponseCycle.send(self, message)

        def _rewind(self) -> None:
            # The response state uvicorn's send() set from http.response.start.
            self.response_started = False
            self.chunked_encoding = None
            self.expected_content_length = 0

        def _frame(self, n: int) -> Tuple[bytes, bytes]:
            # uvicorn's bookkeeping for a body of n bytes (its send() for http.response.body).
            if self.chunked_encoding:
                return b"%x\r\n" % n, b"\r\n"
            self.expected_content_length -= n
            return b"", b""

    class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
        """uvicorn's httptools protocol whose requests may send files zero-copy."""

        on_headers_complete = _hook_cycle(httptools_impl.HttpToolsProtocol.on_headers_complete,
                                          HttpToolsCycle)


def __getattr__(name: str) -> Any:
    if name == "HttpToolsProtocol":
        # An ImportError, not an AttributeError: uvicorn's --http would say
        # only that the attribute was not found.
        raise missing("fastwrap.uvicorn:HttpToolsProtocol", "httptools",
                       f"{_INSTALL} (or name fastwrap.uvicorn:H11Protocol)")
    if name == "UvicornWorker":
        return _worker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _worker_class() -> type:
    """gunicorn's UvicornWorker running fastwrap's protocol (httptools when installed)."""
    try:  # the uvicorn-worker package, where uvicorn's own worker class moved
        module = importlib.import_module("uvicorn_worker")
    except ImportError:
        try:
            with warnings.catch_warnings():  # uvicorn.workers says to use uvicorn-worker
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module("uvicorn.workers")
        except ModuleNotFoundError as exc:
            # No gunicorn, or a uvicorn without the worker class it moved out.
            needed = "gunicorn" if exc.name == "gunicorn" else "uvicorn-worker"
            raise missing("fastwrap.uvicorn.UvicornWorker", needed,
                           f"pip install {needed}") from None
    Base: Any = module.UvicornWorker
    protocol = "HttpToolsProtocol" if httptools_impl is not None else "H11Protocol"
    kwargs = dict(Base.CONFIG_KWARGS, http=f"fastwrap.uvicorn:{protocol}")
    worker: type = type("UvicornWorker", (Base,), {
        "__module__": __name__, "CONFIG_KWARGS": kwargs,
        "__doc__": "gunicorn -k fastwrap.uvicorn.UvicornWorker: uvicorn with fastwrap's "
                   "protocol."})
    globals()["UvicornWorker"] = worker
    return worker
