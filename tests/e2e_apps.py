"""WSGI applications for the end-to-end tests: real frameworks serving real files.

Every application serves ``GET/HEAD /files/<name>`` from the directory named
by the environment variable ``FASTWRAP_E2E_ROOT`` (read at request time, so
a test sets it before starting a server; servers in other processes inherit
it).  Each is wrapped with ``_servers.with_stats`` so ``GET /__stats__``
reports the serving process's ``fastwrap.stats()`` whichever launcher runs it.

- ``plain``: returns ``environ['wsgi.file_wrapper'](f)`` itself
  (``?nocl=1``: no Content-Length, the server must add it;
  ``?offset=N``: the file is positioned at N before it is wrapped);
- ``validated``: ``plain`` inside ``wsgiref.validate.validator`` (which fastwrap
  sees through: still a file response);
- ``iterated`` (in ``ITERATED_APPS``, not ``APPS``): ``plain`` behind a middleware
  that wraps the body without saying it adds nothing: servers must iterate it;
- ``flask``: Flask ``send_file(path, conditional=True)`` (ETag,
  Last-Modified, 304, and werkzeug's range wrapper for a 206);
- ``django``: Django ``FileResponse``; ``GET /__django_finished__`` (answered
  outside Django, so it fires no signal itself) returns how many times
  Django's ``request_finished`` signal has fired in this process;
- ``whitenoise``: WhiteNoise in front of a trivial application.

Importing this module configures Django settings (minimal, no database).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Iterable
from wsgiref.validate import validator

from _servers import with_stats

ROOT_ENV = "FASTWRAP_E2E_ROOT"
PREFIX = "/files/"
DJANGO_FINISHED_PATH = "/__django_finished__"


def root() -> str:
    try:
        return os.environ[ROOT_ENV]
    except KeyError:
        raise RuntimeError(f"set {ROOT_ENV} to the directory the e2e apps serve") from None


def _file_path(path_info: str) -> str | None:
    if not path_info.startswith(PREFIX):
        return None
    name = path_info[len(PREFIX):]
    if not name or "/" in name or name.startswith("."):
        return None
    full = os.path.join(root(), name)
    return full if os.path.isfile(full) else None


def _not_found(start_response: Callable) -> Iterable[bytes]:
    body = b"not found\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"),
                                     ("Content-Length", str(len(body)))])
    return [body]


# -- plain WSGI -----------------------------------------------------------------------------

def _plain(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    path = _file_path(environ.get("PATH_INFO", ""))
    if path is None:
        return _not_found(start_response)
    query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&") if p)
    f = open(path, "rb")
    offset = int(query.get("offset", "0"))
    if offset:
        f.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    if query.get("nocl") != "1":
        headers.append(("Content-Length", str(os.fstat(f.fileno()).st_size - offset)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f)


plain = with_stats(_plain)
validated = with_stats(validator(_plain))


class _Undeclared:
    """A middleware's body wrapper that does not follow the wsgi_file_wrapped protocol."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Any:
        return iter(self.inner)

    def close(self) -> None:
        self.inner.close()


iterated = with_stats(lambda environ, start_response: _Undeclared(_plain(environ,
                                                                         start_response)))


# -- Flask ----------------------------------------------------------------------------------

def _make_flask() -> Callable:
    import flask
    from werkzeug.security import safe_join

    app = flask.Flask(__name__)

    @app.route(PREFIX + "<name>")
    def serve(name: str) -> Any:
        path = safe_join(root(), name)
        if path is None or not os.path.isfile(path):
            flask.abort(404)
        return flask.send_file(path, conditional=True, mimetype="application/octet-stream")

    return app


flask_app = _make_flask()
flask = with_stats(flask_app)


# -- Django ---------------------------------------------------------------------------------

_finished_lock = threading.Lock()
_finished = 0


def _count_finished(sender: Any, **kwargs: Any) -> None:
    global _finished
    with _finished_lock:
        _finished += 1


def django_finished() -> int:
    with _finished_lock:
        return _finished


def _django_view(request: Any, name: str) -> Any:
    from django.http import FileResponse, Http404

    path = _file_path(PREFIX + name)
    if path is None:
        raise Http404(name)
    return FileResponse(open(path, "rb"), content_type="application/octet-stream")


def _make_django() -> Callable:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="fastwrap-e2e-tests-only",
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import request_finished

    request_finished.connect(_count_finished, weak=False,
                             dispatch_uid="fastwrap-e2e-request-finished")
    return WSGIHandler()


def _urlpatterns() -> list:
    from django.urls import path

    return [path(PREFIX.lstrip("/") + "<str:name>", _django_view)]


_django_handler = _make_django()
urlpatterns = _urlpatterns()  # ROOT_URLCONF is this module


def _django(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == DJANGO_FINISHED_PATH:
        body = str(django_finished()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return _django_handler(environ, start_response)


django = with_stats(_django)


# -- WhiteNoise -----------------------------------------------------------------------------

def _trivial(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    body = b"not a static file\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"),
                                     ("Content-Length", str(len(body)))])
    return [body]


_whitenoise_apps: Dict[str, Callable] = {}
_whitenoise_lock = threading.Lock()


def _whitenoise(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    from whitenoise import WhiteNoise

    directory = root()
    with _whitenoise_lock:
        app = _whitenoise_apps.get(directory)
        if app is None:
            app = _whitenoise_apps[directory] = WhiteNoise(
                _trivial, root=directory, prefix=PREFIX.strip("/"), max_age=60)
    return app(environ, start_response)


whitenoise = with_stats(_whitenoise)

# The frameworks inside wsgiref.validate.validator too (test_wsgiref_conformance).
validated_flask = with_stats(validator(flask_app))
validated_django = with_stats(validator(_django))

#: app name -> "module:attribute", for launchers.
APPS = {
    "plain": "e2e_apps:plain",
    "validated": "e2e_apps:validated",
    "flask": "e2e_apps:flask",
    "django": "e2e_apps:django",
    "whitenoise": "e2e_apps:whitenoise",
}
#: Apps whose file responses no server can send as files, for the tests of iteration.
ITERATED_APPS = {"iterated": "e2e_apps:iterated"}
