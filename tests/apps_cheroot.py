"""The WSGI application the cheroot tests serve, in a cheroot process of their own.

One application, so that one server answers every kind of file response:

- ``/plain/files/<name>``: ``environ['wsgi.file_wrapper'](open(file))``
  (e2e_apps.plain: ``?nocl=1``, ``?offset=N``);
- ``/flask/files/<name>``: Flask's ``send_file`` (ETag, 304, ranges);
- ``/django/files/<name>``: Django's ``FileResponse``;
- ``/gen/file?...``: apps_gunicorn's application (``skip``, ``cl``,
  ``status``, ``write``) over the file named by FASTWRAP_TEST_FILE;
- ``/pipe``: ``wsgi.file_wrapper`` around a pipe that a thread fills with
  PIPE_DATA, no Content-Length (a body whose length nobody knows);
- ``/__stats__``: this process's ``fastwrap.stats()``.

Files come from the directory named by FASTWRAP_E2E_ROOT.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict

from cheroot.wsgi import PathInfoDispatcher

import apps_gunicorn
import e2e_apps
from _servers import with_stats

PIPE_DATA = bytes(range(256)) * 4096


def _pipe(environ: Dict[str, Any], start_response: Callable) -> Any:
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "wb") as f:
            f.write(PIPE_DATA)

    threading.Thread(target=feed, daemon=True).start()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(read_end, "rb"))


app = with_stats(PathInfoDispatcher({
    "/plain": e2e_apps.plain,
    "/flask": e2e_apps.flask,
    "/django": e2e_apps.django,
    "/gen": apps_gunicorn.app,
    "/pipe": _pipe,
}))
