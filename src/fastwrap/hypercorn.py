"""fastwrap in hypercorn: file bodies leave zero-copy, through the ASGI file extensions.

Run hypercorn through this module, with hypercorn's own command line::

    python -m fastwrap.hypercorn app:app --bind 127.0.0.1:8000 [-k uvloop] [-w 4] ...

or serve from a program, as with ``hypercorn.asyncio.serve``::

    asyncio.run(fastwrap.hypercorn.serve(app, config))

hypercorn takes no protocol or worker class by name (``--worker-class`` is
one of three built-in names), so fastwrap starts it: the command line is
hypercorn's, parsed by hypercorn, and every part of the server is
hypercorn's own but for four classes it creates by name, each a subclass
that changes one thing.  On a plain (not TLS) HTTP/1.1 connection of the
asyncio or uvloop worker, each request's scope advertises, in
``scope["extensions"]``:

``http.response.pathsend``
    ``{"type": "http.response.pathsend", "path": "/absolute/path"}``, sent
    once after ``http.response.start``.  Starlette's and FastAPI's
    ``FileResponse`` send it whenever a server advertises it; a relative
    path is taken in the working directory.  Only a regular file is opened.
    Advertised as ``{"ranges": True, "more_body": True}``: ``offset``,
    ``count`` and ``more_body`` as :data:`fastwrap.asgi.PATHSEND_EXTENSION`
    says; importing this module has Starlette's ``FileResponse`` answer
    ``Range`` requests with them (:mod:`fastwrap.starlette`).

``http.response.zerocopysend``
    ``{"type": "http.response.zerocopysend", "file": f, "offset": o,
    "count": n, "more_body": b}``, any number of them, mixed with
    ``http.response.body`` messages (see :mod:`fastwrap.asgi`).

The bytes then leave through fastwrap's engine (``sendfile(2)`` for a
regular file) by :func:`fastwrap.asyncio.sendfile`, which waits on the loop
for a slow client and has a worker thread read a cold file in: no file
holds the loop.

- the head hypercorn would have written at ``http.response.start`` is held
  for the current turn of the event loop; when the file follows at once (as
  Starlette's does) hypercorn renders it then and head and body leave in one
  write, otherwise it leaves a turn later, byte for byte what hypercorn writes;
- framing is hypercorn's (h11's): exactly min(Content-Length, what the file
  holds) bytes, or one chunk in a chunked response;
- a file that cannot be sent while the head is still held (missing, a
  directory, a FIFO, unreadable, or shorter than the announced length) gets
  hypercorn's own answer to an application that failed before its response
  (``500``, no body, the connection closed); once any byte of the response
  has left, the connection is closed with nothing more, so a file that
  shrinks while it is sent is seen by the client as a short response, never
  as a complete one;
- HEAD, 1xx, 204 and 304 get no body; keep-alive goes on after a file body;
- a client leaving mid-file ends the transfer and the connection, and the
  application's ``receive()`` answers ``http.disconnect``.

HTTP/2, HTTP/3, TLS, HTTP/1.0 and the trio worker keep hypercorn's stock
behaviour and do not advertise the extensions (Starlette then reads and
sends the file itself).  Each file body is logged on hypercorn's error
logger at debug level (``--log-level debug``) with the path that carried
it (``sendfile``, ``splice``...).
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Literal, Optional, cast

import fastwrap.asyncio
import fastwrap.starlette
from fastwrap import asgi
from fastwrap._optional import reraise

_INSTALL = "pip install 'fastwrap[hypercorn]'"

try:
    import hypercorn.__main__ as _hypercorn_main
    import hypercorn.run as _hypercorn_run
    from hypercorn.asyncio import run as _asyncio_run
    from hypercorn.asyncio import serve as _hypercorn_serve
    from hypercorn.asyncio.tcp_server import TCPServer as _TCPServer
    from hypercorn.config import Config
    from hypercorn.events import Closed, Event
    from hypercorn.protocol import ProtocolWrapper as _ProtocolWrapper
    from hypercorn.protocol.events import Body, Request, Response, StreamClosed
    from hypercorn.protocol.events import Event as StreamEvent
    from hypercorn.protocol.h11 import H11Protocol as _H11Protocol
    from hypercorn.protocol.http_stream import ASGIHTTPState
    from hypercorn.protocol.http_stream import HTTPStream as _HTTPStream
    from hypercorn.utils import build_and_validate_headers, write_pid_file
except ModuleNotFoundError as exc:
    raise reraise(exc, "fastwrap.hypercorn", "hypercorn", _INSTALL) from None

__all__ = ["asyncio_worker", "main", "run", "serve", "uvloop_worker"]

# Starlette's Range answers by pathsend with offset and count, where its version is known.
fastwrap.starlette.install()


# -- the events that carry a file -------------------------------------------------------

@dataclass
class FileBody:
    """A stream's file body, for its protocol: *count* bytes of *file* from its position.

    *head* is the response head still to render before it (None when it
    has left).  The connection fills in what happened.  (Not one of
    hypercorn's stream events, which are frozen.)
    """

    stream_id: int
    file: Any
    count: int
    head: Optional[Response]
    sent: int = 0
    path: str = ""
    gone: bool = False  # the client left


@dataclass
class SendFile(Event):
    """For the TCP server: *headers*, *count* bytes of *file*, then *trailer*, on the socket."""

    file: Any
    count: int
    headers: bytes
    trailer: bytes
    sent: int = 0
    path: str = ""
    gone: bool = False


# -- the stream: one request and its response ------------------------------------------------

class HTTPStream(_HTTPStream):
    """hypercorn's HTTP stream, plus the file messages on a plain HTTP/1.1 connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fw_on = False
        self._fw_head: Optional[Response] = None
        self._fw_body_sent = 0
        self._fw_release: Optional[asyncio.Task[None]] = None
        self._fw_app: Any = self.app
        self.app = cast(Any, self._advertising_app)

    async def handle(self, event: StreamEvent) -> None:
        if isinstance(event, Request):
            # The extensions need the socket: never through TLS, never on HTTP/1.0.
            self._fw_on = event.http_version == "1.1" and self.scheme == "http"
        await super().handle(event)

    async def _advertising_app(self, scope: Dict[str, Any], *args: Any) -> None:
        if self._fw_on and scope["type"] == "http":
            asgi.advertise(scope)
        await self._fw_app(scope, *args)

    async def app_send(self, message: Optional[Dict[str, Any]]) -> None:  # type: ignore[override]
        if not self._fw_on:
            await super().app_send(message)  # type: ignore[arg-type]
            return
        if message is None:
            await self._release_head()
            await super().app_send(None)
            return
        kind = message["type"]
        if kind == "http.response.start" and self.state == ASGIHTTPState.REQUEST:
            self._hold_head(message)
        elif kind in asgi.FILE_MESSAGES and self.state == ASGIHTTPState.RESPONSE:
            if not self.closed:  # after a disconnect, quietly nothing, as for a body
                await asgi.send_file(message, self._send_source, self._fail)
        else:
            await self._release_head()
            if kind == "http.response.body" and self.state == ASGIHTTPState.RESPONSE:
                self._fw_body_sent += len(message.get("body", b""))
            await super().app_send(message)  # type: ignore[arg-type]

    # -- the head ------------------------------------------------------------------------

    def _hold_head(self, message: Dict[str, Any]) -> None:
        """What hypercorn's send does at http.response.start, the head kept back a loop turn."""
        headers = build_and_validate_headers(message.get("headers", []))
        self.response = message  # type: ignore[assignment]
        self._fw_head = Response(stream_id=self.stream_id, headers=headers,
                                 status_code=int(message["status"]))
        self.state = ASGIHTTPState.RESPONSE
        asyncio.get_running_loop().call_soon(self._release_soon)

    def _release_soon(self) -> None:
        if self._fw_head is not None:
            # Held here: the loop keeps only a weak reference to a task.
            self._fw_release = asyncio.ensure_future(self._release_head())

    def _take_head(self) -> Optional[Response]:
        head, self._fw_head = self._fw_head, None
        return head

    async def _release_head(self) -> None:
        head = self._take_head()
        if head is not None:
            await self.send(head)

    # -- the file ------------------------------------------------------------------------

    async def _send_source(self, source: asgi.FileSource) -> None:
        start = self.response
        portion = asgi.Portion(source, asgi.allowance(
            self.scope["method"], int(start["status"]), start.get("headers", ()),
            self._fw_body_sent))
        n = portion.n
        if portion.unfillable:
            # Known before the first byte of it leaves: the file shrank since
            # the application took its length.
            await self.config.log.warning(
                "fastwrap: %s; %s", portion.unfillable_reason(),
                "answering 500" if self._fw_head is not None else "closing the connection")
            await self._fail()
            return
        if n is None:
            sent = await self._copy(source)  # a pipe in a chunked response
        elif n == 0:
            await self._release_head()
            sent = 0
        else:
            sent = await self._zero_copy(source, n)
        if self.closed:
            return
        self._fw_body_sent += sent
        expected = portion.short(sent)
        if expected is not None:
            await self.config.log.warning("fastwrap: the file ended after %d of %d body bytes; "
                                          "closing the connection", sent, expected)
            await self._close_unfinished()
        elif source.final:
            await self._send_closed()  # hypercorn's own end of a response

    async def _zero_copy(self, source: asgi.FileSource, n: int) -> int:
        event = FileBody(stream_id=self.stream_id, file=source.file, count=n,
                         head=self._take_head())
        await self.send(cast(Any, event))  # to fastwrap's H11Protocol, which knows it
        if not event.gone:
            await self.config.log.debug("fastwrap: %s %s: %d of %d body bytes by %s",
                                        self.scope["method"], self.scope["path"], event.sent,
                                        n, event.path)
        return event.sent

    async def _copy(self, source: asgi.FileSource) -> int:
        """A source of unknown length: read it and send it as hypercorn's body events."""
        await self._release_head()
        sent = 0
        while not self.closed:
            # Never on the loop from the disk, nor from an empty pipe.
            chunk = await fastwrap.asyncio.read(source.file, asgi.COPY_CHUNK)
            if not chunk:
                break
            await self.send(Body(stream_id=self.stream_id, data=chunk))
            sent += len(chunk)
        await self.config.log.debug("fastwrap: %s %s: %d body bytes copied (length unknown)",
                                    self.scope["method"], self.scope["path"], sent)
        return sent

    async def _fail(self) -> None:
        """The file cannot be sent: hypercorn's 500 if nothing has left yet, else close.

        The held head is dropped unsent and the stream put back to before
        the response, so that hypercorn answers as for an application that
        failed before starting one.
        """
        if self._take_head() is None:
            await self._close_unfinished()
            return
        self.state = ASGIHTTPState.REQUEST
        self._fw_body_sent = 0

    async def _close_unfinished(self) -> None:
        """End the connection where the response stands, so the client sees it cut short."""
        if not self.closed:
            # The connection is not done with the response: hypercorn closes it.
            await self.send(StreamClosed(stream_id=self.stream_id))
        self.state = ASGIHTTPState.CLOSED


# -- the protocol: HTTP/1.1 on one connection -------------------------------------------------

class H11Protocol(_H11Protocol):
    """hypercorn's HTTP/1.1 protocol, creating fastwrap's stream and rendering file bodies."""

    _create_stream = asgi.rebind(_H11Protocol._create_stream, "HTTPStream", HTTPStream,
                                 "fastwrap.hypercorn")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fw_captured: Optional[bytearray] = None

    async def stream_send(self, event: StreamEvent) -> None:
        if not isinstance(event, FileBody):
            await super().stream_send(event)
            return
        head = bytearray()
        if event.head is not None:
            # hypercorn renders the head (its headers, keep-alive and all) into ours.
            self._fw_captured = head
            try:
                await super().stream_send(event.head)
            finally:
                self._fw_captured = None
        prefix, trailer = asgi.h11_frame(self.connection, event.count)
        out = SendFile(file=event.file, count=event.count, headers=bytes(head) + prefix,
                       trailer=trailer)
        await self.send(out)
        event.sent, event.path, event.gone = out.sent, out.path, out.gone

    async def _send_h11_event(self, event: Any) -> None:
        if self._fw_captured is None:
            await super()._send_h11_event(event)
            return
        self._fw_captured += self.connection.send(event) or b""


class ProtocolWrapper(_ProtocolWrapper):
    """hypercorn's protocol choice (HTTP/1.1 or HTTP/2), with fastwrap's HTTP/1.1."""

    __init__ = asgi.rebind(_ProtocolWrapper.__init__, "H11Protocol", H11Protocol,
                           "fastwrap.hypercorn")


# -- the connection ----------------------------------------------------------------------------

class TCPServer(_TCPServer):
    """hypercorn's asyncio connection, which can also send a file on its socket."""

    run = asgi.rebind(_TCPServer.run, "ProtocolWrapper", ProtocolWrapper, "fastwrap.hypercorn")

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, SendFile):
            await super().protocol_send(event)
            return

        def done(path: str, sent: int) -> None:
            event.path = path

        async with self.send_lock:
            try:
                # After what the writer buffers, on a duplicate of its socket,
                # with its reading paused: nothing else writes meanwhile.
                event.sent = await fastwrap.asyncio.sendfile(
                    self.writer, event.file, event.count, event.headers, on_done=done)
                if event.sent == event.count and event.trailer:
                    self.writer.write(event.trailer)
                    await self.writer.drain()
                return
            except ConnectionError:
                event.gone = True
        await self.protocol.handle(Closed())  # as hypercorn does when a write fails


# -- starting hypercorn ------------------------------------------------------------------------

_worker_serve = asgi.rebind(_asyncio_run.worker_serve, "TCPServer", TCPServer,
                            "fastwrap.hypercorn")


def _worker(stock: Callable[..., None], name: str) -> Callable[..., None]:
    worker = asgi.rebind(stock, "worker_serve", _worker_serve, "fastwrap.hypercorn")
    # Found by this name in a worker process (hypercorn starts them by "spawn").
    worker.__module__, worker.__qualname__ = "fastwrap.hypercorn", name
    return worker


#: hypercorn's asyncio worker, serving with fastwrap's connection.
asyncio_worker = _worker(_asyncio_run.asyncio_worker, "asyncio_worker")
#: hypercorn's uvloop worker, serving with fastwrap's connection.
uvloop_worker = _worker(_asyncio_run.uvloop_worker, "uvloop_worker")

_WORKERS = {"asyncio": asyncio_worker, "uvloop": uvloop_worker}
_STOCK_WORKERS = {_asyncio_run.asyncio_worker: asyncio_worker,
                  _asyncio_run.uvloop_worker: uvloop_worker}


def _check_worker_class(config: Config) -> Callable[..., None]:
    worker = _WORKERS.get(config.worker_class)
    if worker is None:
        raise ValueError(f"fastwrap.hypercorn runs hypercorn's asyncio and uvloop workers, not "
                         f"{config.worker_class!r}: use --worker-class asyncio or uvloop")
    return worker


def _populate(processes: List[Any], config: Config, worker_func: Callable[..., None],
              *args: Any) -> None:
    # hypercorn's run() chose its stock worker: each process runs fastwrap's.
    _hypercorn_run._populate(processes, config, _STOCK_WORKERS[worker_func], *args)


_run_processes = asgi.rebind(_hypercorn_run.run, "_populate", _populate, "fastwrap.hypercorn")


def run(config: Config) -> int:
    """``hypercorn.run.run(config)`` with fastwrap's workers; returns the exit code."""
    worker = _check_worker_class(config)
    if config.workers == 0:
        # hypercorn runs its worker in this process then, by its own choosing.
        sockets = config.create_sockets()
        if config.pid_path is not None:
            write_pid_file(config.pid_path)
        worker(config, sockets)
        return 0
    return int(_run_processes(config))


async def serve(app: Any, config: Config, *,
                shutdown_trigger: Optional[Callable[..., Awaitable[Any]]] = None,
                mode: Optional[Literal["asgi", "wsgi"]] = None) -> None:
    """``hypercorn.asyncio.serve(app, config)``, serving with fastwrap's connection.

    Runs on the running loop (asyncio's or uvloop's), as hypercorn's does.
    """
    await _serve(app, config, shutdown_trigger=shutdown_trigger, mode=mode)


_serve = asgi.rebind(_hypercorn_serve, "worker_serve", _worker_serve, "fastwrap.hypercorn")
_main = asgi.rebind(_hypercorn_main.main, "run", run, "fastwrap.hypercorn")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m fastwrap.hypercorn``: hypercorn's command line, with fastwrap's workers."""
    try:
        return int(_main(argv))
    except ValueError as exc:
        if "fastwrap.hypercorn" not in str(exc):
            raise
        print(f"fastwrap.hypercorn: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # The module proper, not this __main__ copy: worker processes find the
    # workers there by name.
    from fastwrap.hypercorn import main as _module_main

    sys.argv[0] = "python -m fastwrap.hypercorn"  # what hypercorn's usage line names
    sys.exit(_module_main())
