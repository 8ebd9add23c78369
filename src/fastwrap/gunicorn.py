"""fastwrap in gunicorn: one worker class, and file responses leave through fastwrap.

Turn it on by naming the worker class::

    gunicorn -k fastwrap.gunicorn.Worker app:app               # sync
    gunicorn -k fastwrap.gunicorn.Worker --threads 8 app:app   # gthread

(or ``worker_class = "fastwrap.gunicorn.Worker"`` in a config file).
:class:`Worker` is gunicorn's ``sync`` worker with one thread and its
``gthread`` with more, as gunicorn's own default is.  :class:`SyncWorker` and
:class:`ThreadWorker` name one of the two; but gunicorn replaces a worker
class *named* "...SyncWorker" by its stock gthread when threads > 1, before
importing anything of fastwrap's (see :class:`SyncWorker`), which is why the
name to give is ``Worker``.  Each worker says at boot, in gunicorn's log, that fastwrap is in and which
engine and class run.  Everything else is gunicorn's own worker: its request
loop, keep-alive, HTTP/2, TLS, timeouts, hooks and logs are untouched.

What changes: ``environ['wsgi.file_wrapper']`` is :class:`fastwrap.FileWrapper`,
and a result that is a file response (fastwrap's or the stdlib's FileWrapper,
or werkzeug's range wrapper around either, as Flask's ``send_file`` answers a
``Range:`` request; also inside ``wsgiref.validate``, Werkzeug's
``ClosingIterator`` or a middleware following the ``wsgi_file_wrapped``
protocol, where gunicorn's own check reads the file in Python) is sent by
:func:`fastwrap.transmit` where gunicorn's
own ``Response.sendfile()`` would be, following the rules of
:mod:`fastwrap.serving` instead of gunicorn's:

- the body starts at the file's ``tell()``, not at the descriptor's raw offset;
- exactly min(Content-Length, what the file holds from there) bytes are sent;
  with no Content-Length from the application, one is set from the file;
- no body for HEAD, 1xx, 204 and 304;
- a file shorter than its Content-Length is logged and the connection closed;
- on TLS (``--certfile``/``--keyfile``) fastwrap writes through the SSL socket
  itself, never handing it to the kernel;
- the access log's ``%(b)s``/``%(B)s`` show the body bytes really sent.

gunicorn's ``--no-sendfile`` also keeps fastwrap off sendfile and splice in
the worker.  Warnings from fastwrap (a short file) go to gunicorn's error log
unless logging was configured otherwise.

How: the worker wraps the application once, when it loads it.  A file
response comes back to gunicorn as a stand-in body whose iteration sends the
file, so it is sent at the same moment, inside the same error handling and
before the same access-log call as any other body.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, Iterator

from ._optional import reraise

try:
    import gunicorn  # type: ignore[import-untyped]
except ModuleNotFoundError as exc:
    raise reraise(exc, "fastwrap.gunicorn", "gunicorn", "pip install gunicorn") from None
from gunicorn.http.wsgi import Response  # type: ignore[import-untyped]
from gunicorn.workers import gthread, sync  # type: ignore[import-untyped]

import fastwrap

from . import serving

__all__ = ["SyncWorker", "ThreadWorker", "Worker"]


class _Worker:
    """What fastwrap adds to a gunicorn worker class (mixed in first)."""

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        self.wsgi = _serve_files_with_fastwrap(self.wsgi)  # type: ignore[has-type]
        if self.cfg.sendfile is False:  # type: ignore[attr-defined]
            fastwrap.disable("sendfile", "splice")  # this worker process only
        _log_to(self.log)  # type: ignore[attr-defined]
        # Info, so that a default run shows it: its absence is the only sign
        # of a worker class gunicorn chose in fastwrap's place (see SyncWorker).
        worker_class = f"{type(self).__module__}.{type(self).__qualname__}"
        if isinstance(self, gthread.ThreadWorker):
            threads = self.cfg.threads  # type: ignore[attr-defined]
            worker_class += f", {threads} thread{'' if threads == 1 else 's'}"
        self.log.info(  # type: ignore[attr-defined]
            "fastwrap: file responses leave through fastwrap (%s engine), worker class %s",
            fastwrap.IMPLEMENTATION, worker_class)


class SyncWorker(_Worker, sync.SyncWorker):
    """gunicorn's ``sync`` worker, sending file responses through fastwrap.

    With ``threads`` > 1 it runs as :class:`ThreadWorker`, as gunicorn runs its
    own ``sync`` as ``gthread``.  gunicorn makes that swap itself, before any
    import, for a worker class *named* by a string ending in "SyncWorker": so
    ``-k fastwrap.gunicorn.SyncWorker --threads 4`` runs gunicorn's stock
    gthread, without fastwrap.  Only the class itself (``worker_class =
    SyncWorker`` in a config file) reaches this one with ``threads`` > 1.
    Subclasses run as they are.
    """

    def __new__(cls, age: Any, ppid: Any, sockets: Any, app: Any, timeout: Any, cfg: Any,
                log: Any) -> Any:
        if cls._threaded(cfg):
            return ThreadWorker(age, ppid, sockets, app, timeout, cfg, log)
        return super().__new__(cls)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        if cls._threaded(cfg):
            _refuse_an_older_gunicorn(
                f"fastwrap.gunicorn.{cls.__name__} with threads = {cfg.threads} runs as "
                "fastwrap.gunicorn.ThreadWorker, which needs", "set threads = 1")
            ThreadWorker.check_config(cfg, log)

    @classmethod
    def _threaded(cls, cfg: Any) -> bool:
        return (cls is SyncWorker or cls is Worker) and cfg.threads > 1


class Worker(SyncWorker):
    """fastwrap's gunicorn worker: ``sync`` with one thread, ``gthread`` with more.

    What ``-k fastwrap.gunicorn.SyncWorker`` would be if gunicorn did not
    swap that name for its stock gthread when threads > 1: a name that does
    not end in "SyncWorker" reaches fastwrap whatever ``--threads`` says.
    """


# Older gthread workers mis-frame keep-alive responses by themselves (a body
# after HEAD, a chunk terminator after 204): fastwrap cannot make those right.
GTHREAD_MINIMUM = (27, 0)
_VERSION = tuple(int(part) for part in re.findall(r"\d+", gunicorn.__version__)[:2])


class ThreadWorker(_Worker, gthread.ThreadWorker):
    """gunicorn's ``gthread`` worker, sending file responses through fastwrap.

    Runs with any ``threads``, 1 included.  Needs gunicorn 27 or later; with an
    older gunicorn it stops gunicorn at boot with one line saying so.
    """

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Raised here, gunicorn prints the message alone and exits.
        _refuse_an_older_gunicorn()
        super().check_config(cfg, log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # gunicorn reloading its configuration (SIGHUP) skips check_config().
        _refuse_an_older_gunicorn()
        super().__init__(*args, **kwargs)


def _refuse_an_older_gunicorn(
        needs: str = "fastwrap.gunicorn.ThreadWorker needs",
        fix: str = "use fastwrap.gunicorn.SyncWorker with threads = 1") -> None:
    if _VERSION < GTHREAD_MINIMUM:
        raise RuntimeError(
            f"{needs} gunicorn >= 27, found {gunicorn.__version__}: older gthread workers "
            f"mis-frame keep-alive responses; with this gunicorn, {fix}")


def _serve_files_with_fastwrap(app: Callable[..., Any]) -> Callable[..., Any]:
    def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["wsgi.file_wrapper"] = fastwrap.FileWrapper
        result = app(environ, start_response)
        # gunicorn's start_response is a method of the request's Response.
        resp: Any = getattr(start_response, "__self__", None)
        if not _writes_raw_http1(resp) or resp.status is None:
            return result
        response = serving.FileResponse.of(result)
        if response is not None:
            return _FileBody(result, response, resp)
        if not serving.body_allowed(environ.get("REQUEST_METHOD", "GET"), resp.status_code):
            # The iterated route keeps the rules too: gunicorn before 27 sends
            # a HEAD response's body.
            return _NoBody(result)
        return result

    return application


def _writes_raw_http1(resp: Any) -> bool:
    # An HTTP/2 response (or any subclass reframing its body) is left to gunicorn.
    return isinstance(resp, Response) and (
        getattr(type(resp), "_emit_body", None) is getattr(Response, "_emit_body", None))


class _FileBody:
    """The body gunicorn iterates for a file response: iterating it sends the file."""

    def __init__(self, result: Any, response: serving.FileResponse, resp: Response) -> None:
        self.result = result
        self.response = response
        self.resp = resp
        self.written_to_end = False

    def __iter__(self) -> Iterator[bytes]:
        if self.resp.headers_sent:  # the app used write(): gunicorn frames the rest
            return self._by_iteration()
        send_file_response(self.resp, self.response)
        return iter(())

    def _by_iteration(self) -> Iterator[bytes]:
        self.response.prepare()
        yield from self.response.wrapper  # Response.write() stops at Content-Length
        self.written_to_end = True

    def close(self) -> None:
        resp = self.resp
        promised = resp.response_length
        if (self.written_to_end and promised is not None and resp.sent < promised
                and serving.body_allowed(resp.req.method, resp.status_code)):
            # gunicorn would leave a short body on a keep-alive connection.
            serving.report_short(serving.Framing(True, None, None, promised), resp.sent,
                                  resp.req.path)
            resp.force_close()
        # gunicorn closes this body once, even when sending failed: the
        # application's result is closed here, and its wrappers close the rest.
        self.response.close()


class _NoBody:
    """An empty body in place of *result*, which is still closed."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()


def send_file_response(resp: Response, response: serving.FileResponse) -> None:
    """Send *response*, headers included, for gunicorn's *resp*; set ``resp.sent``."""
    response.prepare()
    declared = None if resp.response_length is None else str(resp.response_length)
    framing = serving.frame(response, resp.req.method, resp.status_code, declared)
    if framing.content_length is not None:
        resp.headers.append(("Content-Length", str(framing.content_length)))
        resp.response_length = framing.content_length
    elif resp.status_code == 204 or 100 <= resp.status_code < 200:
        # RFC 9110 forbids Content-Length here (gunicorn < 27 kept the app's).
        resp.headers = [h for h in resp.headers if h[0].lower() != "content-length"]
        resp.response_length = None
    if not framing.delimited:
        resp.force_close()  # the body ends when the connection does
    resp.chunked = False
    # As Response.send_headers(), but the bytes leave with the body.
    lines = resp.default_headers() + ["%s: %s\r\n" % header for header in resp.headers]
    head = ("".join(lines) + "\r\n").encode("latin-1")
    resp.headers_sent = True
    if framing.body:
        sent = fastwrap.transmit(resp.sock, response.wrapper, framing.count, headers=head)
    else:
        sent = fastwrap.transmit(resp.sock, (), headers=head)
    resp.sent = sent
    if framing.short(sent):
        serving.report_short(framing, sent, resp.req.path)
        resp.force_close()


def _log_to(gunicorn_log: Any) -> None:
    """Send fastwrap's warnings to gunicorn's error log, if nobody configured logging."""
    ours = logging.getLogger("fastwrap")
    if ours.handlers or logging.getLogger().handlers:
        return
    for handler in getattr(gunicorn_log, "error_log", logging.getLogger("gunicorn.error")).handlers:
        ours.addHandler(handler)
