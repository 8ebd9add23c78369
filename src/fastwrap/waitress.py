"""fastwrap in waitress: file bodies leave by sendfile(2) from waitress's own loop.

Turn it on where ``waitress.serve`` is called, with the same arguments::

    import fastwrap.waitress
    fastwrap.waitress.serve(app, listen="127.0.0.1:8080", threads=8)

or from the command line, with every option of ``waitress-serve``::

    python -m fastwrap.waitress --listen=127.0.0.1:8080 myapp:app

(:func:`create_server` is ``waitress.create_server``'s twin.)

waitress hands ``wsgi.file_wrapper`` bodies to its channel as a buffer that
its loop reads in ``SO_SNDBUF``-sized pieces and ``send()``s.  Here the
application gets :class:`fastwrap.FileWrapper` instead, and a file response
goes to the channel as a body that the channel's own writes move with a
non-blocking :class:`fastwrap.Transmission` (``sendfile(2)`` for a regular
file): the same writes, at the same moments, from the same threads (the
task thread's first flush, then the loop).  A step that would wait for the
disk does not: the file's next window is read into the page cache by one of
a few fetch threads (started at the first such wait), and the channel
resumes when it is in.  Those threads are fastwrap's own, so a disk read
never queues behind application work on waitress's task threads (which can
themselves be waiting for the loop to flush).

Everything else is waitress's: its task threads, its buffering of every
other response, ``channel_timeout`` and the other adjustments, its headers
(``Server``, ``Date``), its logger.  File responses follow the rules every
fastwrap integration shares (:mod:`fastwrap.serving`), where stock waitress
differs:

- the body starts at the file's ``tell()`` and is min(Content-Length, what
  the file holds from there); the application's Content-Length is kept, and
  one is set from the file when it gave none (an empty file included);
- no body for HEAD, 1xx, 204 and 304 (stock waitress sends the file, and
  after a HEAD whatever body the application returns);
- a file shorter than its Content-Length before the first byte is answered
  500, as waitress answers a failing application (stock waitress sends a
  200 with a smaller Content-Length than the application's);
- a file that shrinks while it is sent is logged and the connection closed
  at once (stock waitress waits out ``channel_timeout``).

Each file response gets a debug line in waitress's logger (``waitress``)
naming the path that carried it::

    fastwrap: GET /big.iso: 268435456 of 268435456 body bytes by sendfile

A file wrapper of unknown length (a pipe), a result returned after the
application used ``write()``, and one returned before ``start_response`` was
called are left to waitress, which iterates them.
"""
from __future__ import annotations

import errno
import logging
import select
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ._optional import reraise

try:
    import waitress
except ModuleNotFoundError as exc:
    raise reraise(exc, "fastwrap.waitress", "waitress", "pip install waitress") from None
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.runner import run as _run_waitress
from waitress.server import BaseWSGIServer
from waitress.task import WSGITask

import fastwrap

from . import serving

__all__ = ["Channel", "create_server", "main", "serve"]

# What wasyncore's send() takes for a client that is gone: the channel closes
# quietly, with no "Socket error" traceback.
_DISCONNECTED = frozenset({errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN,
                           errno.ECONNABORTED, errno.EPIPE, errno.EBADF})

_log = logging.getLogger("waitress")
_running = threading.local()  # .task: the WSGITask this task thread is executing
class _Task(WSGITask):
    """waitress's WSGITask, telling the application wrapper which task it serves.

    It also keeps a HEAD response bodiless whatever the application returns:
    waitress would send an iterated body after a HEAD's headers, and, for a
    body of unknown length, a chunked body's terminator.
    """

    headers_only = False  # a file response that may have no body (1xx, 204, 304)

    def execute(self) -> None:
        _running.task = self
        try:
            super().execute()
        finally:
            _running.task = None

    def _no_body(self) -> bool:
        return self.headers_only or self.request.command.upper() == "HEAD"

    def build_response_header(self) -> bytes:
        head: bytes = super().build_response_header()
        if self._no_body():
            self.chunked_response = False  # no terminator: there is no body to end
        return head

    def write(self, data: bytes) -> None:
        if data and self._no_body():
            super().write(b"")  # the headers, if not out yet, as waitress writes them
            # Counted as written, as waitress counts what it drops for a 304.
            self.content_bytes_written += len(data)
            return
        super().write(data)


class _FileBody(ReadOnlyFileBasedBuffer):
    """A file response's body, as an outbuf of the channel: :class:`Channel` sends it.

    It stands where waitress puts its ReadOnlyFileBasedBuffer, so waitress's
    task writes the headers and hands it over exactly as it does its own.
    """

    def __init__(self, response: serving.FileResponse, framing: serving.Framing,
                 what: str) -> None:
        # ReadOnlyFileBasedBuffer.__init__ would bind the file's seek/tell: not needed.
        self.file = response.wrapper
        self.response = response
        self.framing = framing
        self.what = what  # "GET /path", for the log
        self.count = (framing.count or 0) if framing.body else 0
        self.remain = self.count  # what waitress counts in total_outbufs_len
        self.tx: Optional[Any] = None
        self.broken = False  # the client went away mid-body
        self.cut = False  # the file came up short: the connection is closing
        self.logged = False  # its debug line is written
        self._lock = threading.Lock()
        self._off_loop = False  # a fetch thread is using the file
        self._closed = False

    def prepare(self, size: Optional[int] = None) -> int:
        # waitress's task calls this with the Content-Length it will send
        # (the application's, or the one set from the file): a nonzero one
        # makes it write the headers and hand this body to the channel.
        return size or 0

    def __iter__(self) -> Iterator[bytes]:
        # Reached only with a zero Content-Length or none (304): no body.
        return iter(())

    def get(self, numbytes: int = -1, skip: bool = False) -> bytes:
        raise RuntimeError("a fastwrap file body is sent by fastwrap.waitress.Channel; "
                           "serve with fastwrap.waitress.create_server")

    def transmission(self, sock: Any) -> Any:
        if self.tx is None:
            # nowait: a step sends only what the page cache holds, and
            # reports the disk instead of waiting for it on the loop.
            self.tx = fastwrap.Transmission(self.response.wrapper, sock, self.count,
                                            nowait=True)
        return self.tx

    def leave_loop(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._off_loop = True
            return True

    def back_on_loop(self) -> None:
        with self._lock:
            self._off_loop = False
            close = self._closed
        if close:
            self._release()  # closed while the fetch thread read the file

    @property
    def off_loop(self) -> bool:
        return self._off_loop

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._off_loop:
                return  # back_on_loop() releases the file
        self._release()

    def _release(self) -> None:
        tx = self.tx
        if tx is not None:
            tx.close()  # leaves the file just after the last byte sent
        if not self.logged and self.count:
            # The connection closed before the body was through.
            sent, path = (tx.sent, tx.path) if tx is not None else (0, "-")
            _log.debug("fastwrap: %s: %d of %d body bytes by %s, then the connection "
                       "closed", self.what, sent, self.count, path)
        self.remain = 0
        if hasattr(self.response.result, "close"):
            self.response.result.close()


class _FileResponses:
    """The application, with file responses turned into :class:`_FileBody`."""

    def __init__(self, application: Callable[..., Any]) -> None:
        self.application = application

    def __call__(self, environ: Dict[str, Any],
                 start_response: Callable[..., Any]) -> Any:
        environ["wsgi.file_wrapper"] = fastwrap.FileWrapper
        result = self.application(environ, start_response)
        task = getattr(_running, "task", None)
        if task is None or not task.complete or task.wrote_header:
            # Not called by our task, or start_response deferred to the
            # first iteration, or headers already out through write():
            # waitress iterates the result, under its own rules.
            return result
        response = serving.FileResponse.of(result)
        if response is None:
            return result
        try:
            return self._file_body(task, environ, response)
        except BaseException:
            if hasattr(result, "close"):
                result.close()
            raise

    @staticmethod
    def _file_body(task: Any, environ: Dict[str, Any],
                   response: serving.FileResponse) -> Any:
        response.prepare()
        method = environ.get("REQUEST_METHOD", "GET")
        declared = next((v for k, v in task.response_headers
                         if k.lower() == "content-length"), None)
        status = int(task.status.split(None, 1)[0])
        framing = serving.frame(response, method, status, declared)
        what = f"{method} {environ.get('PATH_INFO', '?')}"
        if not framing.body:
            task.headers_only = True  # HEAD is already; 1xx, 204, 304 too
            _log.debug("fastwrap: %s: no body (%s) by -", what, task.status)
        elif not framing.delimited:
            # No length to announce (a pipe): waitress chunk-encodes what it
            # iterates, which keeps the connection usable.
            return response.result
        if framing.short(framing.count or 0):
            # Known before the first byte: no 200 with a short body; waitress
            # answers an application that raises with a 500.
            raise ValueError(f"{what}: the file holds {framing.count} bytes from its "
                             f"position, fewer than the Content-Length {framing.expected} "
                             f"the application gave; send a Content-Length the file "
                             f"can fill")
        if framing.content_length is not None:
            # waitress adds the header from this, where HTTP allows one.
            task.content_length = framing.content_length
        return _FileBody(response, framing, what)


class Channel(HTTPChannel):
    """waitress's HTTPChannel, whose writes send file bodies with fastwrap.

    Every other outbuf is flushed as waitress flushes it.  A file body moves
    at most a socket buffer's worth (``SO_SNDBUF``, what waitress sends in one
    piece) per flush, so that a fast client cannot hold the loop: the loop
    comes back to it at once while the channel is writable.  While a fetch
    thread reads the file's next window, the channel is not writable; the
    thread wakes the loop when it is done.
    """

    task_class = _Task

    def writable(self) -> bool:
        if self._fetching():
            return bool(self.will_close)
        return bool(super().writable())

    def _fetching(self) -> bool:
        outbufs = self.outbufs
        return bool(outbufs) and isinstance(outbufs[0], _FileBody) and outbufs[0].off_loop

    def _flush_some(self, do_close: bool = True) -> bool:
        # waitress's _flush_some, with file bodies sent by _send_file.
        sent = 0
        while True:
            outbuf = self.outbufs[0]
            if isinstance(outbuf, _FileBody):
                moved, finished = self._send_file(outbuf, do_close)
                sent += moved
                if not finished:
                    break
            else:
                outbuflen = outbuf.__len__()
                blocked = False
                while outbuflen > 0:
                    chunk = outbuf.get(self.sendbuf_len)
                    num_sent = self.send(chunk, do_close=do_close)
                    if not num_sent:
                        blocked = True
                        break
                    outbuf.skip(num_sent, True)
                    outbuflen -= num_sent
                    sent += num_sent
                    self.total_outbufs_len -= num_sent
                if blocked:
                    break
            if len(self.outbufs) > 1:
                toclose = self.outbufs.pop(0)
                try:
                    toclose.close()
                except Exception:
                    self.logger.exception("Unexpected error when closing an outbuf")
            else:
                break  # caught up: self.outbufs[-1] is always a writable buffer
        if sent:
            self.last_activity = time.time()
            return True
        return False

    def _send_file(self, body: _FileBody, do_close: bool) -> Tuple[int, bool]:
        """Send what the socket takes of *body*: (bytes moved, whether the body is done with)."""
        if body.broken:
            if do_close:
                self.handle_close()
            return 0, False
        if body.off_loop or body.cut:
            return 0, False
        if body.count == 0:
            return 0, True
        tx = body.transmission(self.socket)
        before = tx.sent
        try:
            # Steps until the socket takes no more, as waitress's own flush
            # sends; but at most a socket buffer's worth, so that a client
            # reading as fast as the file leaves cannot hold the loop.
            while True:
                tx.send()
                if tx.done or tx.waiting is not None or tx.sent - before >= self.sendbuf_len:
                    break
        except BlockingIOError:
            pass
        except OSError as exc:
            self._account(body, tx.sent - before)
            if exc.errno in _DISCONNECTED:
                body.broken = True  # as wasyncore's send(): the client is gone
                if do_close:
                    self.handle_close()
                return tx.sent - before, False
            raise  # waitress's _flush_exception logs it and closes the channel
        moved = tx.sent - before
        self._account(body, moved)
        if tx.done:
            body.logged = True
            _log.debug("fastwrap: %s: %d of %d body bytes by %s", body.what, tx.sent,
                       body.count, tx.path)
            if tx.sent < body.count:
                serving.report_short(body.framing, tx.sent, body.what)
                body.cut = True
                # Closed now: the client would otherwise wait for bytes that
                # will never come (stock waitress waits out channel_timeout).
                self.total_outbufs_len -= body.remain
                body.remain = 0
                self.will_close = True
                self.server.pull_trigger()  # from a task thread: wake the loop
                return moved, False
            return moved, True
        wait = tx.waiting
        if wait is not None and wait.event != "write" and body.leave_loop():
            try:
                serving.fetch_pool().submit(self._off_loop, body, tx, wait,
                                     float(self.adj.channel_timeout))
            except RuntimeError:  # the pool is shut down: the interpreter is exiting
                body.back_on_loop()
                raise
        return moved, False

    def _account(self, body: _FileBody, moved: int) -> None:
        body.remain -= moved
        self.total_outbufs_len -= moved

    def _off_loop(self, body: _FileBody, tx: Any, wait: fastwrap.Wait,
                  timeout: float) -> None:
        # In a fetch thread: wait for what the transmission waits for, then
        # hand the channel back to the loop.
        try:
            if wait.event == "disk":
                tx.fetch()
            elif wait.fd < 0:
                time.sleep(serving.BACKOFF)
            else:
                select.select([wait.fd], [], [], timeout)
        except Exception:
            # The headers are out: a body that cannot go on ends the connection.
            self.logger.exception("fastwrap: %s: reading the file failed; closing the "
                                  "connection", body.what)
            self.will_close = True
        finally:
            body.back_on_loop()
            try:
                self.server.pull_trigger()
            except OSError:
                pass  # the server is closing


def _channel_class_for_all(map: Dict[int, Any]) -> None:
    for dispatcher in list(map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = Channel


def create_server(application: Any, map: Optional[Dict[int, Any]] = None,
                  **kw: Any) -> Any:
    """``waitress.create_server`` whose file responses leave through fastwrap.

    Takes every argument waitress's does (``listen``, ``threads``,
    ``channel_timeout``...); returns what it returns (call ``.run()``).
    """
    if application is None:
        raise ValueError('The "app" passed to ``create_server`` was ``None``: return a WSGI '
                         "app from your application factory.")
    if map is None:
        map = {}
    server = waitress.create_server(_FileResponses(application), map=map, **kw)
    _channel_class_for_all(map)
    return server


def serve(app: Any, **kw: Any) -> None:
    """``waitress.serve`` whose file responses leave through fastwrap: same arguments."""
    logging.basicConfig()  # as waitress.serve: idempotent where logging is set up
    server = create_server(app, **kw)
    server.print_listen("Serving on http://{}:{}")
    server.run()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m fastwrap.waitress``: ``waitress-serve``, with fastwrap's channel."""
    args = list(sys.argv if argv is None else argv)
    args[0] = "python -m fastwrap.waitress"
    return int(_run_waitress(args, _serve=serve) or 0)


if __name__ == "__main__":
    # Run as a script, this module is __main__: serve with the importable
    # fastwrap.waitress, the one an application sees.
    from fastwrap.waitress import main as _main
    sys.exit(_main())
