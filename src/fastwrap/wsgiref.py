"""fastwrap in the stdlib's wsgiref: patched into every handler, or a ready server.

``install()`` makes every ``wsgiref.handlers.BaseHandler`` (simple_server,
CGIHandler, and servers built on them) send file responses through
fastwrap.  It keeps ``wsgiref.util.FileWrapper`` as the handlers'
``wsgi.file_wrapper`` (CPython's own test_wsgiref asserts it) and does its
work in the ``sendfile()`` hook that BaseHandler offers for exactly this,
recognising the stdlib's wrapper, fastwrap's, and werkzeug's range wrapper
around either, also inside wrappers that add nothing to the bytes
(``wsgiref.validate``, Werkzeug's ``ClosingIterator``, the
``wsgi_file_wrapped`` protocol: see :func:`fastwrap.serving.unwrap`).
BaseHandler closes the application's result once, as it always does, and
each wrapper closes what it wraps.

``make_server()`` is a threaded HTTP/1.1 server with keep-alive whose
handler does the same without patching anything.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import socketserver
import threading
from typing import Any, Callable, Iterator, Optional
from wsgiref import handlers, simple_server

import fastwrap

from . import _request, serving

__all__ = ["Handler", "RequestHandler", "Server", "install", "installed",
           "make_server", "send_file_response", "uninstall"]

_stock: Optional[tuple[Any, Any]] = None
_SOCKET_WRITER: Any = getattr(socketserver, "_SocketWriter", ())
#: The Server header of make_server's responses, and its SERVER_SOFTWARE.
_SERVER_SOFTWARE = f"fastwrap/{fastwrap.__version__}"


def _result_is_file(self: Any) -> bool:
    response = serving.FileResponse.of(self.result)
    self._fastwrap_response = response
    return response is not None


def _sendfile(self: Any) -> bool:
    response = getattr(self, "_fastwrap_response", None)
    if response is None:
        return False
    self._fastwrap_response = None
    return send_file_response(self, response)


_STOCK_WRITE = handlers.BaseHandler.write


def _write(self: Any, data: bytes) -> None:
    # The stdlib loop's write(), under the same rules as a transmitted file:
    # no body where HTTP forbids one, never past the Content-Length.
    if self.status and not serving.body_allowed(
            self.environ.get("REQUEST_METHOD", "GET"), int(self.status.split(None, 1)[0])):
        data = b""  # the headers still go out
    else:
        promised = serving.parse_content_length(self.headers.get("Content-Length"))
        if promised is not None:
            sent = self.bytes_sent if self.headers_sent else 0
            data = data[:max(promised - sent, 0)]
    _STOCK_WRITE(self, data)


_PATCHES = {"result_is_file": _result_is_file, "sendfile": _sendfile, "write": _write}


# Two threads installing at once must not both save the stock methods: the
# second would save the first one's patches as "stock".
_patching = threading.Lock()


def install() -> None:
    """Send every wsgiref handler's file responses through fastwrap."""
    global _stock
    with _patching:
        if _stock is None:
            cls = handlers.BaseHandler
            _stock = tuple(cls.__dict__[name] for name in _PATCHES)
            for name, patch in _PATCHES.items():
                setattr(cls, name, patch)


def uninstall() -> None:
    """Put wsgiref back as it was before :func:`install`."""
    global _stock
    with _patching:
        if _stock is not None:
            for name, original in zip(_PATCHES, _stock):
                setattr(handlers.BaseHandler, name, original)
            _stock = None


def is_installed() -> bool:
    return _stock is not None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``with installed():`` fastwrap is in wsgiref for the block, and no longer."""
    already = is_installed()
    install()
    try:
        yield
    finally:
        if not already:
            uninstall()


def send_file_response(handler: Any, response: serving.FileResponse) -> bool:
    """Send *response* for a wsgiref *handler*, headers included; always True.

    Writes through fastwrap when the handler's output has a descriptor
    (a socket, a CGI pipe), and through the handler's own ``_write``
    otherwise, following the same rules either way.
    """
    response.prepare()
    environ = handler.environ
    status = int(handler.status.split(None, 1)[0])
    framing = serving.frame(response, environ.get("REQUEST_METHOD", "GET"), status,
                             handler.headers.get("Content-Length"))
    if framing.content_length is not None:
        handler.headers["Content-Length"] = str(framing.content_length)
    dest = _descriptor(handler)
    head = _headers_as_bytes(handler)
    if dest is None:
        handler._write(head)
        sent = 0
        if framing.body:
            for chunk in serving.iter_body(response, framing):
                handler._write(chunk)
                sent += len(chunk)
        handler._flush()
    elif framing.body:
        transmission = fastwrap.Transmission(response.wrapper, dest, framing.count, head)
        handler.body_path = transmission.path
        try:
            sent = transmission.run()
        finally:
            handler.bytes_sent = transmission.sent  # what the access log reports, also if cut
    else:
        sent = fastwrap.transmit(dest, (), headers=head)
    handler.bytes_sent = sent
    if framing.short(sent):
        serving.report_short(framing, sent, environ.get("PATH_INFO", "?"))
    if framing.short(sent) or not framing.delimited:
        _close_connection(handler)
    return True


def _descriptor(handler: Any) -> Any:
    """The socket or descriptor under the handler's output, flushed; None if none."""
    out = getattr(handler, "stdout", None)
    if isinstance(out, _SOCKET_WRITER):  # simple_server's unbuffered wfile
        return out._sock
    try:
        fd = out.fileno()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return None  # a BytesIO, or a handler writing somewhere of its own
    handler._flush()
    return fd


def _headers_as_bytes(handler: Any) -> bytes:
    # Let the handler render its headers (preamble, Date, Server, CGI Status:
    # whatever its class does) but keep the bytes, to send with the body.
    chunks: list[bytes] = []
    handler._write = chunks.append
    try:
        handler.send_headers()
    finally:
        del handler._write
    return b"".join(chunks)


def _close_connection(handler: Any) -> None:
    request_handler = getattr(handler, "request_handler", None)
    if request_handler is not None:
        request_handler.close_connection = True


class Handler(simple_server.ServerHandler):
    """A wsgiref handler speaking HTTP/1.1 with fastwrap for file responses."""

    http_version = "1.1"
    server_software = _SERVER_SOFTWARE
    wsgi_file_wrapper = fastwrap.FileWrapper  # type: ignore[assignment]
    result_is_file = _result_is_file
    sendfile = _sendfile
    write = _write
    request_handler: Any
    body_path = "-"  # the fastwrap path that carried a file body, for the access log
    environ: Any
    status: Any
    headers: Any
    bytes_sent: int
    headers_sent: bool

    def finish_response(self) -> None:
        try:
            super().finish_response()
        except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError):
            # BaseHandler.run drops a response the client walked away from
            # without logging it: log the bytes that did leave.
            request_handler = self.request_handler
            request_handler.close_connection = True
            request_handler.body_path = self.body_path
            status = self.status.split(None, 1)[0] if self.status else "-"
            request_handler.log_request(status, self.bytes_sent)
            raise

    def finish_content(self) -> None:
        # wsgiref adds "Content-Length: 0" to a response without one; for a
        # 304 or 204, and in answer to HEAD, that would misstate the resource.
        if not self.headers_sent and not serving.body_allowed(
                self.environ.get("REQUEST_METHOD", "GET"), int(self.status.split(None, 1)[0])):
            self.send_headers()
        else:
            super().finish_content()

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        method = self.environ.get("REQUEST_METHOD", "GET")
        status = int(self.status.split(None, 1)[0])
        # Keep-alive needs a body whose end the client can find.
        delimited = ("Content-Length" in self.headers
                     or not serving.body_allowed(method, status))
        if not delimited:
            self.request_handler.close_connection = True
        if self.request_handler.close_connection:
            self.headers["Connection"] = "close"
        elif self.request_handler.request_version == "HTTP/1.0":
            # An HTTP/1.0 client kept alive on request must be told so, or
            # it waits for the end of the body at the connection's close.
            self.headers["Connection"] = "keep-alive"

    def close(self) -> None:
        promised = serving.parse_content_length(
            self.headers.get("Content-Length") if self.headers else None)
        if (promised is not None and self.status
                and serving.body_allowed(self.environ.get("REQUEST_METHOD", "GET"),
                                          int(self.status.split(None, 1)[0]))
                and self.bytes_sent != promised):
            self.request_handler.close_connection = True
        self.request_handler.body_path = self.body_path
        super().close()


class RequestHandler(simple_server.WSGIRequestHandler):
    """HTTP/1.1 with keep-alive: requests on a connection until either side closes it."""

    protocol_version = "HTTP/1.1"
    server_version = _SERVER_SOFTWARE
    timeout = 30  # an idle keep-alive connection gives its thread back after this
    handler_class = Handler
    body_path = "-"
    quiet = False

    def version_string(self) -> str:
        return self.server_version  # not http.server's "Python/3.x" after it

    def parse_request(self) -> bool:
        """``http.server``'s checks of the request line, with a lean header reader.

        Sets command, path, request_version, headers and close_connection;
        on failure the error response is sent and False returned.
        """
        self.command = None  # type: ignore[assignment]
        # Not http.server's "HTTP/0.9", with which send_error writes no status line.
        self.request_version = version = "HTTP/1.1"
        self.close_connection = True
        self.requestline = requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        if not self.raw_requestline.endswith(b"\n"):
            self._cut_short(400)  # the connection ended inside the request line
            return False
        words = requestline.split()
        if len(words) != 3:
            # No HTTP/0.9: a server this fast should not answer without headers.
            if words:
                self.send_error(400, f"Bad request syntax ({requestline!r})")
            return False
        command, path, version = words
        major, dot, minor = version[5:].partition(".")
        if (not version.startswith("HTTP/") or not dot or not major.isdigit()
                or not minor.isdigit() or len(major) > 10 or len(minor) > 10):
            self.send_error(400, f"Bad request version ({version!r})")
            return False
        number = (int(major), int(minor))
        if number >= (2, 0):
            self.send_error(505, f"Invalid HTTP version ({version[5:]})")
            return False
        self.command, self.path, self.request_version = command, path, version
        if path.startswith("//"):
            # As http.server does (gh-87389): "//host" would read as an authority.
            self.path = "/" + path.lstrip("/")
        try:
            self.headers = _request.read_headers(self.rfile)  # type: ignore[assignment]
            _request.check_host(self.headers, number)  # type: ignore[arg-type]
        except _request.BadRequest as exc:
            self.send_error(exc.status, str(exc))
            return False
        except (EOFError, ConnectionError):
            self._cut_short(400)
            return False
        except socket.timeout:
            self._cut_short(408)
            return False
        connection = self.headers.get("Connection", "").lower()
        self.close_connection = not (
            connection == "keep-alive" or (number >= (1, 1) and connection != "close"))
        if (self.headers.get("Expect", "").lower() == "100-continue"
                and number >= (1, 1)):
            try:
                return self.handle_expect_100()
            except ConnectionError:
                self._cut_short(400)  # gone before it could send the body
                return False
        return True

    def _cut_short(self, status: int) -> None:
        """The client stopped sending inside its request: it closed, reset, or fell silent.

        Nothing is served for a request that never ended.  A bare *status*
        goes out in case the client only half-closed and still reads, and the
        request gets its one access-log line, whether that answer arrives or not.
        """
        self.close_connection = True
        try:
            self.send_response(status)  # logs the request
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
        except OSError:
            pass  # it has gone: there is no one to tell

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        try:
            super().send_error(code, message, explain)
        except ConnectionError:
            # The client left before its error page: the request is logged already.
            self.close_connection = True

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        """One access-log line: the request, status, body bytes really sent, path taken."""
        if not self.quiet:
            self.log_message('"%s" %s %s %s', self.requestline, code, size, self.body_path)
        self.body_path = "-"

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (socket.timeout, ConnectionError):
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        environ = self.get_environ()
        environ["REQUEST_URI"] = self.path  # the target as sent, before percent-decoding
        # A request body the application may not read in full would be
        # taken for the next request: such connections end after the response.
        if environ.get("CONTENT_LENGTH") not in (None, "", "0") or self.headers.get(
                "Transfer-Encoding"):
            self.close_connection = True
        handler = self.handler_class(self.rfile, self.wfile,  # type: ignore[arg-type]
                                     self.get_stderr(), environ, multithread=True)
        handler.request_handler = self
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


class Server(simple_server.WSGIServer):
    """A WSGI server whose connections are served by a pool of *threads*."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type = RequestHandler,
                 threads: int = 16) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Before binding: socketserver calls server_close() when binding fails.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="fastwrap")
        self._connections: set[Any] = set()
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                self._connections.discard(request)
            self.shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening and end every open connection, idle keep-alive ones included.

        A worker waiting for a client's next request would otherwise hold the
        process (the pool's threads are joined at exit) until the client left.
        """
        super().server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=False)


def make_server(host: str, port: int, app: Callable[..., Any], threads: int = 16,
                handler: type = RequestHandler) -> Server:
    """A threaded HTTP/1.1 WSGI server sending file responses through fastwrap.

    ``make_server("127.0.0.1", 8000, app).serve_forever()``.  Nothing global
    is patched: only this server's handlers use fastwrap.
    """
    server = Server((host, port), handler, threads)
    server.set_app(app)
    return server
