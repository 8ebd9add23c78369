"""fastwrap in cheroot (and CherryPy): file responses leave through fastwrap.

One line turns it on, in place of ``cheroot.wsgi.Server``::

    server = fastwrap.cheroot.Server(("0.0.0.0", 8080), app)   # same arguments
    server.start()

For a server built elsewhere (CherryPy's, cheroot's own command line),
``fastwrap.cheroot.install()`` before it is built does the same for every
``cheroot.wsgi.Server`` made afterwards.

Everything else is cheroot's own server: its worker threads, keep-alive,
timeouts, TLS adapters, statistics and error log are untouched.  What
changes: ``environ['wsgi.file_wrapper']`` is :class:`fastwrap.FileWrapper`
(stock cheroot offers none), and a result that is a file response
(fastwrap's or the stdlib's FileWrapper, or werkzeug's range wrapper around
either, as Flask's ``send_file`` answers a ``Range:`` request) leaves through
:class:`fastwrap.Transmission`, its head in the same write as the body's first
bytes, following :mod:`fastwrap.serving` instead of cheroot's iteration:

- the body starts at the file's ``tell()``;
- exactly min(Content-Length, what the file holds from there) bytes leave;
  with no Content-Length from the application, one is set from the file, so
  the connection stays alive where cheroot would have chunked the body;
- no body for HEAD, 1xx, 204 and 304 (cheroot sends what the application
  yields, a HEAD answer's body included);
- a file already shorter than its Content-Length answers ``500`` as cheroot
  does for a failing application; one that shrinks mid-send is logged and its
  connection closed;
- over TLS (cheroot's builtin adapter) fastwrap writes through the SSL socket
  itself, reading the file, never handing the socket to the kernel; any
  other connection object is written through cheroot's own writer.

Each file response logs one debug line on the ``fastwrap.cheroot`` logger
naming the path that carried its body (sendfile, splice, mmap, readinto,
read, or ``cheroot-writer``).
"""
from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Dict, Optional

from ._optional import reraise

try:
    import cheroot.wsgi
except ModuleNotFoundError as exc:
    raise reraise(exc, "fastwrap.cheroot", "cheroot",
                  "pip install 'fastwrap[cheroot]'") from None

import fastwrap

from . import serving

__all__ = ["GATEWAYS", "Gateway_10", "Gateway_u0", "Server", "install", "is_installed",
           "uninstall"]

log = logging.getLogger("fastwrap.cheroot")

#: What carried a body written through cheroot's own writer (a connection
#: object fastwrap does not know, such as the pyOpenSSL adapter's).
WRITER_PATH = "cheroot-writer"


class _FileGateway:
    """What fastwrap adds to a cheroot WSGI gateway class (mixed in first)."""

    req: Any
    env: Dict[str, Any]
    started_response: bool
    start_response: Callable[..., Any]
    body_written = 0  # by the application's write()

    def get_environ(self) -> Any:  # cheroot's stub says None, its code a dict
        environ: Dict[str, Any] = super().get_environ()  # type: ignore[misc]
        environ["wsgi.file_wrapper"] = fastwrap.FileWrapper
        return environ

    def respond(self) -> None:
        """Run the application; send a file response through fastwrap, iterate anything else."""
        req = self.req
        result = req.server.wsgi_app(self.env, self.start_response)
        try:
            response = serving.FileResponse.of(result) if self.started_response else None
            if response is not None and not req.sent_headers:
                self._send_file(response)
            elif response is not None:
                self._iterate_file(response)
            else:
                # As cheroot's Gateway.respond, for a result that is not a file.
                for chunk in filter(None, result):
                    if not isinstance(chunk, bytes):
                        raise ValueError("WSGI Applications must yield bytes")
                    self.write(chunk)
                req.ensure_headers_sent()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _send_file(self, response: serving.FileResponse) -> None:
        req = self.req
        response.prepare()
        method = req.method.decode("iso-8859-1")
        status = int(req.status[:3])
        framing = serving.frame(response, method, status, _declared_length(req))
        if framing.count is not None and framing.short(framing.count):
            # Nothing is on the wire yet: cheroot answers 500 for an
            # application that fails before its head, and closes.
            raise ValueError(
                f"{self.env.get('PATH_INFO', '?')}: the file holds {framing.count} bytes "
                f"from its position, fewer than its Content-Length {framing.expected}")
        if framing.content_length is not None:
            req.outheaders.append((b"Content-Length", str(framing.content_length).encode()))
        head = _head(req, framing.delimited)
        dest = req.conn.socket
        sent, path = 0, "-"
        try:
            if not framing.body:
                req.conn.wfile.write(head)
            elif isinstance(dest, socket.socket):  # ssl.SSLSocket included
                transmission = fastwrap.Transmission(response.wrapper, dest, framing.count, head)
                path = transmission.path
                try:
                    transmission.run()
                finally:
                    sent = transmission.sent  # also when cut off
                    _count_written(req, len(head) + sent)
            else:
                path = WRITER_PATH
                req.conn.wfile.write(head)
                for chunk in serving.iter_body(response, framing):
                    req.conn.wfile.write(chunk)
                    sent += len(chunk)
        except BaseException as exc:
            self._log(sent, path, exc)
            if isinstance(exc, TimeoutError):
                # The words cheroot looks for to drop a stalled client quietly,
                # as it does when its own write times out.
                raise TimeoutError("timed out") from exc
            raise
        self._log(sent, path)
        if framing.short(sent):
            serving.report_short(framing, sent, self.env.get("PATH_INFO", "?"))
            req.close_connection = True

    def _log(self, sent: int, path: str, error: Optional[BaseException] = None) -> None:
        # One line per file response, ended or cut off, naming what carried its body.
        req = self.req
        log.debug("%s %s: %s, %d body bytes by %s%s", req.method.decode("iso-8859-1"),
                  self.env.get("PATH_INFO", "?"), req.status.decode("iso-8859-1"), sent, path,
                  "" if error is None else f", cut off by {type(error).__name__}")

    def write(self, chunk: bytes) -> None:
        """cheroot's ``write()``, counting the body bytes the application wrote."""
        super().write(chunk)  # type: ignore[misc]
        self.body_written += len(chunk)

    def _iterate_file(self, response: serving.FileResponse) -> None:
        """A file after the application's own ``write()``: the head is out, so by iteration.

        cheroot's ``write()`` checks each piece against the whole
        Content-Length, not against what is left of it: here the file gets
        only what is left.
        """
        req = self.req
        response.prepare()
        declared = _declared_length(req)
        left = serving.parse_content_length(declared)
        framing = serving.frame(response, req.method.decode("iso-8859-1"), int(req.status[:3]),
                                None if left is None else str(max(left - self.body_written, 0)))
        sent = 0
        try:
            if framing.body:
                for chunk in serving.iter_body(response, framing):
                    req.write(chunk)
                    sent += len(chunk)
        except BaseException as exc:
            self._log(sent, WRITER_PATH, exc)
            raise
        self._log(sent, WRITER_PATH)
        if framing.short(sent):
            serving.report_short(framing, sent, self.env.get("PATH_INFO", "?"))
            req.close_connection = True


def _declared_length(req: Any) -> Optional[str]:
    """The application's Content-Length header, None if it gave none."""
    return next((value.decode("iso-8859-1") for key, value in req.outheaders
                 if key.lower() == b"content-length"), None)


def _head(req: Any, delimited: bool) -> bytes:
    """The response head cheroot would write (Date, Server, Connection, ...), as bytes.

    cheroot's send_headers() decides keep-alive and renders the head; it is
    run as is, with its single write caught so the head leaves with the body.
    """
    if not delimited:
        # A body of unknown length (a pipe) ends with the connection, never
        # chunked: cheroot chunks any HTTP/1.1 body without Content-Length.
        req.close_connection = True
        if not any(key.lower() == b"connection" for key, _ in req.outheaders):
            req.outheaders.append((b"Connection", b"close"))
    conn = req.conn
    wfile, protocol = conn.wfile, req.response_protocol
    caught = _Caught()
    conn.wfile = caught
    if not delimited:
        req.response_protocol = "HTTP/1.0"  # cheroot's one way not to chunk
    try:
        req.sent_headers = True
        req.send_headers()
    finally:
        conn.wfile, req.response_protocol = wfile, protocol
    return caught.data


class _Caught:
    """A stand-in for a connection's writer, keeping what is written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def _count_written(req: Any, sent: int) -> None:
    # cheroot's statistics ("Bytes Written") read the writer's counter.
    wfile = req.conn.wfile
    if hasattr(wfile, "bytes_written"):
        wfile.bytes_written += sent


class Gateway_10(_FileGateway, cheroot.wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway, sending file responses through fastwrap."""


class Gateway_u0(_FileGateway, cheroot.wsgi.Gateway_u0):
    """cheroot's WSGI u.0 gateway, sending file responses through fastwrap."""


#: ``wsgi_version`` -> gateway class, as ``cheroot.wsgi.wsgi_gateways``.
GATEWAYS: Dict[Any, type] = {Gateway_10.version: Gateway_10, Gateway_u0.version: Gateway_u0}


class Server(cheroot.wsgi.Server):
    """``cheroot.wsgi.Server`` sending file responses through fastwrap; same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = GATEWAYS[self.wsgi_version]


_stock: Optional[Dict[Any, type]] = None


def install() -> None:
    """Make every ``cheroot.wsgi.Server`` built from now on send files through fastwrap.

    cheroot picks a server's gateway from ``cheroot.wsgi.wsgi_gateways`` when
    the server is built (CherryPy's server included): servers built before
    this call are left as they are.
    """
    global _stock
    if _stock is None:
        _stock = dict(cheroot.wsgi.wsgi_gateways)
        cheroot.wsgi.wsgi_gateways.update(GATEWAYS)


def uninstall() -> None:
    """Put cheroot's gateways back, for servers built from now on."""
    global _stock
    if _stock is not None:
        cheroot.wsgi.wsgi_gateways.clear()
        cheroot.wsgi.wsgi_gateways.update(_stock)
        _stock = None


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _stock is not None
