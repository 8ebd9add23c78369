"""WSGI apps the gunicorn tests serve (imported by the gunicorn worker from tests/).

The file they send is named by the environment variable FASTWRAP_TEST_FILE,
which the test wrote, so the test knows every byte.

``app``: ``GET /file`` returns ``environ['wsgi.file_wrapper'](open(file))``;
the query string shapes the response:

- ``skip=K``: read K bytes (buffered) before wrapping, so the body starts at
  ``tell()`` = K while the descriptor's raw offset is further on;
- ``cl=N``: send ``Content-Length: N`` (default: none, the server sets it);
- ``status=NNN``: the status (default 200);
- ``write=N``: write N bytes ``b"w"`` with start_response's ``write()`` first.

Any other path answers 404 with a short body (never a file).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict
from urllib.parse import parse_qs

from _servers import with_stats

REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 304: "Not Modified"}


def _files(environ: Dict[str, Any], start_response: Callable) -> Any:
    if environ["PATH_INFO"] != "/file":
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                          ("Content-Length", "9")])
        return [b"not found"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    f = open(os.environ["FASTWRAP_TEST_FILE"], "rb")
    if "skip" in query:
        f.read(int(query["skip"]))
    status = int(query.get("status", "200"))
    headers = [("Content-Type", "application/octet-stream")]
    if "cl" in query:
        headers.append(("Content-Length", query["cl"]))
    write = start_response(f"{status} {REASONS.get(status, 'Whatever')}", headers)
    if "write" in query:
        write(b"w" * int(query["write"]))
    return environ["wsgi.file_wrapper"](f)


app = with_stats(_files)
