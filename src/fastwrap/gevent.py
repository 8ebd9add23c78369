"""fastwrap in gevent's ``pywsgi``: ``wsgi.file_wrapper`` and cooperative sending.

gevent's pywsgi has offered no ``wsgi.file_wrapper`` since 2010 (gevent #33,
#1738): every file is read into Python and written in chunks.  This module's
:class:`WSGIHandler` provides fastwrap's :class:`~fastwrap.FileWrapper` and
sends file responses with a :class:`~fastwrap.Transmission` on the client
socket (sendfile on plain HTTP).  The greenlet waits for whatever holds its
transmission up: the client socket or an empty non-blocking source on the
hub, and a file whose next bytes are not in the page cache in gevent's
threadpool (the hub never reads the disk).  A slow client, a slow pipe or a
cold file only ever holds its own greenlet::

    from gevent.pywsgi import WSGIServer
    import fastwrap.gevent
    WSGIServer(("", 8000), app, handler_class=fastwrap.gevent.WSGIHandler).serve_forever()

or ``fastwrap.gevent.WSGIServer(("", 8000), app)``, which has it preset.

File responses follow the rules every fastwrap integration shares (see
``fastwrap.serving``): the body starts at the file's ``tell()``; at most
min(Content-Length, what the file holds) bytes leave; a missing
Content-Length is set from the file; no body for HEAD, 1xx, 204 and 304; a
file that comes up short is logged and the connection closed; a file
response inside wrappers that add nothing to its bytes (``wsgiref.validate``,
Werkzeug's ``ClosingIterator``, the ``wsgi_file_wrapped`` protocol) is sent
the same way, and pywsgi closes the application's result once; and the
access log counts the bytes really sent (headers included, as pywsgi counts
them).  Anything else the application returns is iterated by pywsgi, under
the same rules: no body for HEAD, 1xx, 204 and 304 (stock pywsgi sends a
HEAD response's body), never more than the Content-Length, and a short body
closes the connection.

A body of unknown length (a pipe) cannot be chunk-encoded without copying
it, so it is sent raw and delimited by closing the connection
(``Connection: close``).
"""
from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Tuple

from ._optional import reraise

try:
    import gevent
    from gevent import pywsgi
except ModuleNotFoundError as exc:
    raise reraise(exc, "fastwrap.gevent", "gevent", "pip install gevent") from None
from gevent.hub import get_hub
from gevent.socket import wait as _wait

import fastwrap

from . import serving

__all__ = ["WSGIHandler", "WSGIServer"]

_EVENTS = {"read": 1, "write": 2}  # libev/libuv EV_READ, EV_WRITE


class WSGIHandler(pywsgi.WSGIHandler):
    """A ``gevent.pywsgi`` handler that sends file responses through fastwrap.

    Use it as ``WSGIServer(addr, app, handler_class=fastwrap.gevent.WSGIHandler)``.
    """

    #: Seconds a file response may make no progress before the connection is
    #: dropped; ``None`` uses the client socket's timeout (pywsgi's own
    #: writes wait as long).
    file_send_timeout: Optional[float] = None

    # pywsgi's own state, set per request (typed here: gevent ships no types).
    code: Any
    provided_content_length: Any
    response_headers: Any
    response_length: int

    _fastwrap_framing: Optional[serving.Framing] = None
    _fastwrap_started = False
    _fastwrap_body = True                  # whether this response may have a body
    _fastwrap_left: Optional[int] = None   # body bytes still promised by Content-Length

    def get_environ(self) -> Any:
        env = super().get_environ()
        env["wsgi.file_wrapper"] = fastwrap.FileWrapper
        return env

    def handle_one_response(self) -> None:
        self._fastwrap_framing = None
        self._fastwrap_started = False
        self._fastwrap_body = True
        self._fastwrap_left = None
        super().handle_one_response()

    def process_result(self) -> None:
        response = None
        if self.status and not self.headers_sent:
            # With headers already out (the app used write()), the stock loop
            # stays in charge of the framing it began.
            response = serving.FileResponse.of(self.result)
        if response is not None:
            self.send_file_response(response)
            return
        # Anything else (an unknown wrapper too) is iterated by pywsgi, under
        # the same rules: see finalize_headers() and _write().
        super().process_result()
        left = self._fastwrap_left
        if self._fastwrap_body and left:
            promised = serving.parse_content_length(self.provided_content_length) or 0
            serving.report_short(serving.Framing(True, None, None, promised),
                                  promised - left, self.environ.get("PATH_INFO", "?"))
            self.close_connection = True

    def send_file_response(self, response: serving.FileResponse) -> None:
        """Send *response*'s headers and body on the client socket, cooperatively."""
        response.prepare()
        method = self.environ.get("REQUEST_METHOD", self.command or "GET")
        framing = serving.frame(response, method, self.code, self.provided_content_length)
        self._fastwrap_framing = framing
        if framing.content_length is not None:
            value = str(framing.content_length)
            # In place of the application's, if it gave one that is no number.
            self.response_headers = [(k, v) for k, v in self.response_headers
                                     if k.lower() != b"content-length"]
            self.response_headers.append((b"Content-Length", value.encode("latin-1")))
            self.provided_content_length = value
        head = self._render_headers()
        self._fastwrap_started = True
        if not framing.body:
            self._sendall(head)
            return
        sent = self._transmit(response, framing, head)
        if framing.short(sent):
            serving.report_short(framing, sent, self.environ.get("PATH_INFO", "?"))
            self.close_connection = True

    def finalize_headers(self) -> None:
        super().finalize_headers()
        method = self.environ.get("REQUEST_METHOD", self.command or "GET")
        self._fastwrap_body = serving.body_allowed(method, self.code)
        if self._fastwrap_body:
            self._fastwrap_left = serving.parse_content_length(self.provided_content_length)
        else:
            # pywsgi would send a HEAD response's body (and a chunked one's
            # terminator): the header may stay, the bytes may not.
            self.response_use_chunked = False
        framing = self._fastwrap_framing
        if framing is None:
            return
        # pywsgi chunks bodies of unknown length; a transmitted file is sent
        # as it is, so its end must be the connection's.
        if self.response_use_chunked:
            self.response_use_chunked = False
            self.response_headers = [(k, v) for k, v in self.response_headers
                                     if k.lower() != b"transfer-encoding"]
        if not framing.delimited:
            self.close_connection = True
            self.response_headers = [(k, v) for k, v in self.response_headers
                                     if k.lower() != b"connection"]
            self.response_headers.append((b"Connection", b"close"))

    def _write(self, data: Any, _bytearray: Any = bytearray) -> None:
        # The body of an iterated response: none where HTTP forbids one, and
        # never past the Content-Length the client was promised.
        if not data or not self._fastwrap_body:
            return
        left = self._fastwrap_left
        if left is not None:
            if not isinstance(data, (bytes, bytearray)):
                data = memoryview(data).cast("B")
            if len(data) > left:
                data = memoryview(data).cast("B")[:left]
            self._fastwrap_left = left - len(data)
            if not data:
                return
        super()._write(data)

    def _render_headers(self) -> bytes:
        # pywsgi's own rendering (status line, Date, finalize_headers and any
        # subclass's additions), captured to leave together with the body.
        chunks: List[bytes] = []
        self._sendall = chunks.append  # type: ignore[method-assign]
        try:
            self._write_with_headers(b"")
        finally:
            del self._sendall
        return b"".join(bytes(c) for c in chunks)

    def _transmit(self, response: serving.FileResponse, framing: serving.Framing,
                  head: bytes) -> int:
        sock = self.socket
        timeout = self.file_send_timeout
        if timeout is None:
            timeout = sock.gettimeout() or None  # 0 would fail every wait at once
        # nowait: a step sends only what the page cache holds, and says when
        # the rest is on the disk, for the threadpool to read in.
        tx = fastwrap.Transmission(response.wrapper, sock, framing.count, headers=head,
                                   nowait=True)
        waits = _Waits(sock.fileno(), timeout)
        moved = 0
        try:
            while not tx.done:
                try:
                    moved += tx.send()
                except BlockingIOError:
                    pass
                wait = tx.waiting  # a step may move bytes and still stop on a wait
                if wait is not None:
                    waits.until_ready(tx, wait)
        except socket.error as ex:
            # As pywsgi's _sendall marks a failed write (for its log).
            self.status = "socket error: %s" % ex
            if self.code and self.code > 0:
                self.code = -self.code
            self.close_connection = True
            raise
        finally:
            waits.close()  # first: a fetch still under way reads the file
            tx.close()
            # A step that fails after moving bytes reports none of them, but
            # tx.sent counts every body byte that left (after all the headers).
            self.response_length += len(head) + tx.sent if tx.sent else moved
        return tx.sent

    def _send_error_response_if_possible(self, error_code: int) -> None:
        if self._fastwrap_started:
            # Headers of a file response may be on the wire: no second response.
            self.close_connection = True
            return
        super()._send_error_response_if_possible(error_code)


class _Waits:
    """Parks a transmission's greenlet until its next step can make progress.

    A descriptor is waited for on the hub, the disk in the hub's threadpool:
    the hub's own thread never blocks, whatever the transmission waits for.
    """

    def __init__(self, dest_fd: int, timeout: Optional[float]) -> None:
        self._hub = get_hub()
        self._dest_fd = dest_fd
        self._timeout = timeout
        # Per (fd, event): a watcher, reused for every wait, and its timeout's error.
        self._watchers: Dict[Tuple[int, str], Tuple[Any, OSError]] = {}
        self._fetching: Any = None  # the threadpool's result while fetch() runs

    def until_ready(self, tx: Any, wait: fastwrap.Wait) -> None:
        if wait.event == "disk":
            self._fetching = self._hub.threadpool.spawn(tx.fetch)
            self._fetching.get()
            self._fetching = None
        elif wait.fd < 0:
            gevent.sleep(serving.BACKOFF)  # nothing to poll: back off briefly rather than spin
        else:
            entry = self._watchers.get(wait)
            if entry is None:
                message = serving.stall_message(self._timeout, wait.fd == self._dest_fd)
                entry = (self._hub.loop.io(wait.fd, _EVENTS[wait.event]),
                         socket.timeout(message))
                self._watchers[wait] = entry
            _wait(entry[0], self._timeout, entry[1])

    def close(self) -> None:
        fetching, self._fetching = self._fetching, None
        # Interrupted mid-fetch (killed, timed out): the worker thread still
        # reads the source's descriptor, which must stay open until it is done.
        while fetching is not None and not fetching.ready():
            try:
                fetching.wait()
            except BaseException:  # interrupted again: the first interruption goes on
                pass
        for watcher, _ in self._watchers.values():
            watcher.close()
        self._watchers.clear()


class WSGIServer(pywsgi.WSGIServer):
    """``gevent.pywsgi.WSGIServer`` with :class:`WSGIHandler` preset."""

    handler_class = WSGIHandler
