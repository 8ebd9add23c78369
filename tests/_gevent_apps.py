"""WSGI applications served by the gevent tests (imported in the server process).

Files come from the directory named by ``FASTWRAP_TEST_ROOT`` in the
server's environment; the query string says how to answer:

``/file?name=N``        ``environ['wsgi.file_wrapper'](open(N))``, Content-Length
                        from the file unless ``cl=`` gives one (``cl=none``: none)
``&skip=K``             read K bytes before wrapping (the body starts at tell())
``&status=304``         another status
``&stream=1``           wrap a reader whose size the server cannot know
``&iterate=1``          hide the wrapper inside an object no server recognises
``/?which=1``           the name of the server's ``wsgi.file_wrapper``
``/pipe?name=N&size=K&after=S``  a non-blocking pipe that gets the first K bytes
                        of N S seconds after the response starts, then EOF
``/__steps__``          what this process's transmissions did (see :class:`Steps`);
                        ``gate=arm`` holds the next fetch until ``gate=open``,
                        ``kill=1`` kills the greenlet whose fetch is held

The server's ``fastwrap.Transmission`` is a counting subclass (:class:`Counted`):
fastwrap.gevent looks it up there, and only counts what it does.
"""
from __future__ import annotations

import io
import json
import os
import threading
from typing import Any, Callable, Dict, Optional
from urllib.parse import parse_qs

import gevent
from gevent import monkey

import fastwrap
from _children import HANG

ROOT = os.environ.get("FASTWRAP_TEST_ROOT", "")

STATUS = {200: "200 OK", 206: "206 Partial Content", 204: "204 No Content",
          304: "304 Not Modified", 404: "404 Not Found"}


def plain(environ: Dict[str, Any], start_response: Callable) -> Any:
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ.get("PATH_INFO") == "/__steps__":
        return steps(q, start_response)
    if environ.get("PATH_INFO") == "/pipe":
        return pipe(environ, start_response, q)
    if "which" in q:  # what the server offers as wsgi.file_wrapper
        wrapper = environ.get("wsgi.file_wrapper")
        name = f"{wrapper.__module__}.{wrapper.__qualname__}" if wrapper else "none"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [name.encode()]
    path = os.path.join(ROOT, q.get("name", "small.bin"))
    f = open(path, "rb")
    if "skip" in q:
        f.read(int(q["skip"]))  # a buffered read: tell() is ahead of the fd offset
    size = os.fstat(f.fileno()).st_size - f.tell()
    if q.get("stream"):
        data = f.read()
        f.close()
        f = io.BufferedReader(io.BytesIO(data))  # no descriptor, size unknowable
    status = int(q.get("status", "200"))
    headers = [("Content-Type", "application/octet-stream")]
    cl = q.get("cl", "file")
    if cl == "file":
        if status not in (204, 304):
            headers.append(("Content-Length", str(size)))
    elif cl != "none":
        headers.append(("Content-Length", cl))
    start_response(STATUS[status], headers)
    wrapper = environ["wsgi.file_wrapper"](f)
    if q.get("iterate"):
        return Unknown(wrapper)
    return wrapper


def pipe(environ: Dict[str, Any], start_response: Callable, q: Dict[str, str]) -> Any:
    with open(os.path.join(ROOT, q["name"]), "rb") as f:
        data = f.read(int(q["size"]))  # at most a pipe's capacity: one write, never blocking
    r, w = os.pipe()
    os.set_blocking(r, False)

    def feed() -> None:
        os.write(w, data)
        os.close(w)

    gevent.spawn_later(float(q["after"]), feed)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(data)))])
    return environ["wsgi.file_wrapper"](open(r, "rb", buffering=0))


# -- what the transmissions did ----------------------------------------------------

# Real threads and locks even under monkey-patching: fetches run in gevent's
# threadpool, outside the hub's thread, and the gate must hold that thread.
_thread_ident = monkey.get_original("_thread", "get_ident")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")


class Steps:
    """Counts of this process's transmission steps, and a gate that can hold a fetch.

    ``/__steps__`` is answered by another greenlet of the same hub: answered
    while a fetch is held at the gate, it shows the hub kept running.
    """

    def __init__(self) -> None:
        self.lock = _allocate_lock()
        self.counts = dict.fromkeys(("sends", "fetches", "fetches_off_hub", "fetch_errors",
                                     "at_gate", "closes", "closed_mid_fetch"), 0)
        self.fetching = 0
        self.hub_thread = gevent.get_hub().thread_ident
        self.gate: Optional[Any] = None  # a real lock, held until the gate opens
        self.armed = False               # the next fetch waits at the gate
        self.held: Optional["Counted"] = None  # the transmission whose fetch waits there

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def arm(self) -> None:
        self.open()
        gate = _allocate_lock()
        gate.acquire()
        self.gate, self.armed = gate, True

    def open(self) -> None:
        gate, self.gate, self.armed = self.gate, None, False
        if gate is not None:
            gate.release()


STEPS = Steps()


class Counted(fastwrap.Transmission):
    """fastwrap's Transmission, counting its steps and fetches, and where they ran."""

    greenlet: Any = None  # the one that sends

    def send(self) -> int:
        STEPS.add("sends")
        self.greenlet = gevent.getcurrent()
        return super().send()

    def fetch(self) -> None:
        with STEPS.lock:
            STEPS.counts["fetches"] += 1
            STEPS.counts["fetches_off_hub"] += _thread_ident() != STEPS.hub_thread
            STEPS.fetching += 1
            gate = STEPS.gate if STEPS.armed else None
            STEPS.armed = False
        try:
            if gate is not None:
                STEPS.held = self
                STEPS.add("at_gate")
                # Bounded: a driver that fetched in the hub's thread could never open it.
                gate.acquire(True, HANG)
                STEPS.add("at_gate", -1)
            super().fetch()
        except BaseException:
            STEPS.add("fetch_errors")
            raise
        finally:
            with STEPS.lock:
                STEPS.fetching -= 1

    def close(self) -> None:
        with STEPS.lock:
            STEPS.counts["closes"] += 1
            STEPS.counts["closed_mid_fetch"] += STEPS.fetching > 0
        super().close()


fastwrap.Transmission = Counted


def steps(q: Dict[str, str], start_response: Callable) -> Any:
    if q.get("gate") == "arm":
        STEPS.arm()
    elif q.get("gate") == "open":
        STEPS.open()
    if q.get("kill") and STEPS.held is not None:
        STEPS.held.greenlet.kill(block=False)
    body = json.dumps(STEPS.counts).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


class Unknown:
    """A wrapper no server recognises: the body must be iterated."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Any:
        return iter(self.inner)

    def close(self) -> None:
        self.inner.close()


# -- Flask ----------------------------------------------------------------------

def _flask_app() -> Any:
    import flask

    app = flask.Flask(__name__)

    @app.route("/flask/<name>")
    def send(name: str) -> Any:
        return flask.send_file(os.path.join(ROOT, name), conditional=True,
                               mimetype="application/octet-stream")

    return app


# -- Django ---------------------------------------------------------------------

_finished = 0
_finished_lock = threading.Lock()


def _django_app() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                           SECRET_KEY="fastwrap-tests", MIDDLEWARE=[], USE_TZ=True)
        django.setup()
    from django.core.signals import request_finished
    from django.core.wsgi import get_wsgi_application

    def count(**kwargs: Any) -> None:
        global _finished
        with _finished_lock:
            _finished += 1

    request_finished.connect(count, weak=False)
    return get_wsgi_application()


def _django_file(request: Any, name: str) -> Any:
    from django.http import FileResponse
    return FileResponse(open(os.path.join(ROOT, name), "rb"))


def _django_finished(request: Any) -> Any:
    from django.http import HttpResponse
    return HttpResponse(str(_finished))


try:
    from django.urls import path as _path
    urlpatterns = [_path("django/finished", _django_finished),
                   _path("django/<str:name>", _django_file)]
except ImportError:  # pragma: no cover - Django is in the test extra
    urlpatterns = []


# -- WhiteNoise -----------------------------------------------------------------

def _whitenoise_app() -> Any:
    from whitenoise import WhiteNoise

    def not_found(environ: Dict[str, Any], start_response: Callable) -> Any:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]

    return WhiteNoise(not_found, root=ROOT, prefix="static/")


# -- one app for all of them ------------------------------------------------------

_apps: Dict[str, Any] = {}


def app(environ: Dict[str, Any], start_response: Callable) -> Any:
    path = environ.get("PATH_INFO", "")
    for prefix, make in (("/flask/", _flask_app), ("/django/", _django_app),
                         ("/static/", _whitenoise_app)):
        if path.startswith(prefix):
            if prefix not in _apps:
                _apps[prefix] = make()
            return _apps[prefix](environ, start_response)
    return plain(environ, start_response)
