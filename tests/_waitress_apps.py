"""The WSGI application the waitress tests serve (imported in the server process).

Files come from the directory named by ``FASTWRAP_E2E_ROOT`` (see e2e_apps):

``/flask/files/N``      Flask ``send_file`` (conditional: ETag, 304, ranges)
``/django/files/N``     Django ``FileResponse``
``/plain/files/N``      ``environ['wsgi.file_wrapper'](open(N))`` (e2e_apps.plain)
``/file?name=N``        the same, with the query saying how: ``cl=K`` a
                        Content-Length of K (``cl=none``: none; default: the
                        file's size from its position), ``skip=K`` read K bytes
                        first (tell() is then ahead of the descriptor's
                        offset), ``status=304`` another status
``/small?size=K``       an ordinary iterated body of K bytes (``parts=P``: in P pieces)
``/__threads__``        the names of this process's threads, one a line
``/__stats__``          this process's ``fastwrap.stats()`` and engine
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Iterable
from urllib.parse import parse_qs

import e2e_apps
from _servers import with_stats

STATUS = {200: "200 OK", 204: "204 No Content", 304: "304 Not Modified"}
PREFIXES = {"/flask": e2e_apps.flask, "/django": e2e_apps.django, "/plain": e2e_apps.plain}


def _file(environ: Dict[str, Any], start_response: Callable, q: Dict[str, str]) -> Any:
    f = open(os.path.join(e2e_apps.root(), q["name"]), "rb")
    if "skip" in q:
        f.read(int(q["skip"]))  # a buffered read: tell() is ahead of the fd offset
    headers = [("Content-Type", "application/octet-stream")]
    cl = q.get("cl", str(os.fstat(f.fileno()).st_size - f.tell()))
    if cl != "none":
        headers.append(("Content-Length", cl))
    start_response(STATUS[int(q.get("status", "200"))], headers)
    return environ["wsgi.file_wrapper"](f)


def _small(start_response: Callable, q: Dict[str, str]) -> Iterable[bytes]:
    size, parts = int(q.get("size", "100")), int(q.get("parts", "1"))
    body = bytes(i % 251 for i in range(size))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    step = -(-size // parts) or 1
    return [body[i:i + step] for i in range(0, size, step)]


def _app(environ: Dict[str, Any], start_response: Callable) -> Any:
    path = environ.get("PATH_INFO", "")
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    for prefix, app in PREFIXES.items():
        if path.startswith(prefix + "/"):
            environ["PATH_INFO"] = path[len(prefix):]
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            return app(environ, start_response)
    if path == "/file":
        return _file(environ, start_response, q)
    if path == "/small":
        return _small(start_response, q)
    if path == "/__threads__":
        body = "\n".join(t.name for t in threading.enumerate()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


app = with_stats(_app)
