"""File responses behind middleware, for test_middleware.py; imported by the servers only.

``GET/HEAD /files/<name>?id=ID&wrap=K1,K2,...`` answers FASTWRAP_E2E_ROOT/<name>
in ``environ['wsgi.file_wrapper']``; ``/flask/<name>`` answers it with Flask's
``send_file`` (conditional: ranges, 304).  Middleware kind K1 is put around
that application, K2 around K1, and so on (the last is outermost):

- ``validate``: ``wsgiref.validate.validator``;
- ``closing``: returns Werkzeug's ``ClosingIterator`` with a callback of its own;
- ``transparent``: a wrapper following fastwrap's ``wsgi_file_wrapped`` protocol;
- ``opaque``: a wrapper that delegates iteration and close but says nothing
  (as most middleware does today);
- ``gzip``: compresses the body (Content-Encoding: gzip): it changes the bytes.

Every kind but ``validate`` adds a header ``X-Layer-<i>: <kind>`` (``i`` its
place in the list, from 0).  Each ``close()`` of a layer and of the file is
recorded under ID as ``"<kind>#<i>"`` or ``"file"``, in the order of the calls;
``GET /__closes__?id=ID`` answers the record as a JSON list.  ``?length=N``
declares ``Content-Length: N`` instead of the file's size.

So that validate's closes are recorded too, this module wraps
``wsgiref.validate.IteratorWrapper.close`` (the class stays the same; the
stock method still runs) in the server process that imports it.
"""
from __future__ import annotations

import io
import json
import os
import threading
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List
from urllib.parse import parse_qs
from wsgiref import validate

from _servers import with_stats

ROOT_ENV = "FASTWRAP_E2E_ROOT"
CLOSES_PATH = "/__closes__"

_lock = threading.Lock()
_closes: Dict[str, List[str]] = {}


def record(request_id: str, event: str) -> None:
    with _lock:
        _closes.setdefault(request_id, []).append(event)


_stock_validate_close = validate.IteratorWrapper.close


def _recording_validate_close(self: Any) -> None:
    tag = self.__dict__.get("recorded_as")
    if tag is not None:
        record(*tag)
    _stock_validate_close(self)


validate.IteratorWrapper.close = _recording_validate_close  # type: ignore[method-assign]


class CountedFile(io.FileIO):
    """A file whose every close() call is recorded (not its reads: fastwrap still sends it)."""

    def __init__(self, path: str, request_id: str) -> None:
        super().__init__(path, "rb")
        self.request_id = request_id

    def close(self) -> None:
        record(self.request_id, "file")
        super().close()


# -- middleware -----------------------------------------------------------------------------

class Transparent:
    """A response wrapper following the protocol, as the README shows it."""

    def __init__(self, inner: Iterable[bytes], request_id: str, name: str) -> None:
        self.wsgi_file_wrapped: Any = inner  # adds nothing, and has not started
        self.inner = inner
        self.iterator: Any = None
        self.request_id = request_id
        self.name = name

    def __iter__(self) -> "Transparent":
        return self  # validate and ClosingIterator call iter() at once: it must not start

    def __next__(self) -> bytes:
        if self.iterator is None:
            self.wsgi_file_wrapped = None  # started: from here on it must be iterated
            self.iterator = iter(self.inner)
        return next(self.iterator)

    def close(self) -> None:
        record(self.request_id, self.name)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class Opaque:
    """A delegating wrapper that does not say so: servers must iterate it."""

    def __init__(self, inner: Iterable[bytes], request_id: str, name: str) -> None:
        self.inner = inner
        self.request_id = request_id
        self.name = name

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        record(self.request_id, self.name)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class Gzip(Opaque):
    """Compresses what it wraps: its bytes are not the file's."""

    def __iter__(self) -> Iterator[bytes]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        for chunk in self.inner:
            out = compressor.compress(chunk)
            if out:
                yield out
        yield compressor.flush()


def _layer(kind: str, index: int, app: Callable) -> Callable:
    name = f"{kind}#{index}"
    if kind == "validate":
        checked = validate.validator(app)

        def validated(environ: Dict[str, Any], start_response: Callable) -> Any:
            result = checked(environ, start_response)
            result.recorded_as = (environ["test.request_id"], name)
            return result

        return validated

    def middleware(environ: Dict[str, Any], start_response: Callable) -> Any:
        request_id = environ["test.request_id"]

        def add_header(status: str, headers: List, exc_info: Any = None) -> Any:
            headers = [*headers, (f"X-Layer-{index}", kind)]
            if kind == "gzip":
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Encoding", "gzip"))
            return start_response(status, headers, exc_info)

        result = app(environ, add_header)
        if kind == "closing":
            from werkzeug.wsgi import ClosingIterator
            return ClosingIterator(result, lambda: record(request_id, name))
        return {"transparent": Transparent, "opaque": Opaque, "gzip": Gzip}[kind](
            result, request_id, name)

    return middleware


# -- the applications inside ----------------------------------------------------------------

def _root() -> str:
    return os.environ[ROOT_ENV]


def _plain(environ: Dict[str, Any], start_response: Callable) -> Any:
    name = environ["test.name"]
    f = CountedFile(os.path.join(_root(), name), environ["test.request_id"])
    size = os.fstat(f.fileno()).st_size
    length = environ["test.query"].get("length", [str(size)])[0]
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", length)])
    return environ["wsgi.file_wrapper"](f)


def _make_flask() -> Callable:
    import flask

    app = flask.Flask(__name__)

    @app.route("/flask/<name>")
    def serve(name: str) -> Any:
        request_id = flask.request.environ["test.request_id"]
        f = CountedFile(os.path.join(_root(), name), request_id)
        size = os.fstat(f.fileno()).st_size
        response = flask.send_file(f, mimetype="application/octet-stream", etag=f"e-{size}",
                                   conditional=False)
        response.content_length = size
        return response.make_conditional(flask.request.environ, accept_ranges=True,
                                         complete_length=size)

    return app


_flask = _make_flask()


def _app(environ: Dict[str, Any], start_response: Callable) -> Any:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    path = environ.get("PATH_INFO", "")
    if path == CLOSES_PATH:
        with _lock:
            body = json.dumps(_closes.get(query["id"][0], [])).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    environ["test.request_id"] = query.get("id", ["-"])[0]
    environ["test.query"] = query
    base: Callable = _flask
    if path.startswith("/files/"):
        environ["test.name"] = path[len("/files/"):]
        base = _plain
    app = base
    kinds = [k for k in query.get("wrap", [""])[0].split(",") if k]
    for index, kind in enumerate(kinds):
        app = _layer(kind, index, app)
    return app(environ, start_response)


app = with_stats(_app)
