"""Real WSGI servers on 127.0.0.1 for end-to-end tests.

Each launcher is a context manager ``launcher(app_ref) -> base URL`` where
*app_ref* is ``"module:attribute"`` importable from this directory (so
servers in other processes can import it too).  Apps wrapped with
:func:`with_stats` answer ``GET /__stats__`` with the serving process's
``fastwrap.stats()``, so a test can see which path its bytes took.
"""
from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import threading
from typing import Any, Callable, Dict, Iterator
from wsgiref import simple_server

import fastwrap
import fastwrap.wsgiref

STATS_PATH = "/__stats__"


def with_stats(app: Callable) -> Callable:
    """*app*, plus ``GET /__stats__`` reporting this process's fastwrap.stats()."""

    def wrapped(environ: Dict[str, Any], start_response: Callable) -> Any:
        if environ.get("PATH_INFO") == STATS_PATH:
            body = json.dumps({"implementation": fastwrap.IMPLEMENTATION,
                               "stats": fastwrap.stats()}).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


def load(app_ref: str) -> Callable:
    module, _, attribute = app_ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_stats(base_url: str) -> Dict[str, Dict[str, int]]:
    host, port = base_url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", STATS_PATH)
        return json.loads(conn.getresponse().read())["stats"]
    finally:
        conn.close()


@contextlib.contextmanager
def _in_thread(server: Any) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgiref_installed(app_ref: str) -> Iterator[str]:
    """The stock wsgiref.simple_server with fastwrap.wsgiref.install() active."""
    with fastwrap.wsgiref.installed():
        server = simple_server.make_server("127.0.0.1", 0, with_stats(load(app_ref)),
                                           handler_class=_QuietHandler)
        with _in_thread(server) as url:
            yield url


class _QuietRequestHandler(fastwrap.wsgiref.RequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_make_server(app_ref: str) -> Iterator[str]:
    """fastwrap.wsgiref.make_server: threaded, keep-alive, nothing patched."""
    server = fastwrap.wsgiref.make_server("127.0.0.1", 0, with_stats(load(app_ref)),
                                          threads=8, handler=_QuietRequestHandler)
    with _in_thread(server) as url:
        yield url


LAUNCHERS: Dict[str, Callable[[str], Any]] = {
    "wsgiref-installed": serve_wsgiref_installed,
    "make_server": serve_make_server,
}
