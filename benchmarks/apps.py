"""The WSGI application every Python server in benchmarks/servers.py runs, and launchers.

The application answers ``GET /NAME`` with the file NAME from the directory
in the environment variable ``FASTWRAP_BENCH_ROOT``, through whatever
``environ['wsgi.file_wrapper']`` the server provides (with no block size, so
each server uses its own default) and with a Content-Length, as a static
file view of a framework would.  Every server runs this same function, so
the differences measured are the servers'.

Servers that have no command line of their own are started as
``python apps.py KIND PORT [THREADS]``; every launcher binds 127.0.0.1 and
writes no access log (nginx, gunicorn, waitress and mod_wsgi-express log no
requests by default either, and uWSGI is started with --disable-logging).
"""
from __future__ import annotations

import os
import sys

ROOT = os.environ.get("FASTWRAP_BENCH_ROOT", "")


def app(environ, start_response):
    """Serve a file of ROOT by its name, through the server's wsgi.file_wrapper."""
    name = environ.get("PATH_INFO", "/").lstrip("/")
    # mod_wsgi-express passes the root with --setenv, into the request's environ
    path = os.path.join(environ.get("FASTWRAP_BENCH_ROOT") or ROOT, name)
    if not name or "/" in name or not os.path.isfile(path):
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                          ("Content-Length", "10")])
        return [b"not found\n"]
    f = open(path, "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](f)


if os.environ.get("FASTWRAP_BENCH_MIDDLEWARE") == "validate":
    # servers.py --middleware validate: every server's application inside the
    # middleware behind which gunicorn stops sending files by sendfile (#2279).
    from wsgiref.validate import validator
    app = validator(app)

application = app  # the name mod_wsgi-express and uWSGI look for


def _quiet_wsgiref_handler():
    from wsgiref import simple_server

    class QuietHandler(simple_server.WSGIRequestHandler):
        """The stock handler without its per-request line on stderr."""

        def log_message(self, *args):
            pass

    return QuietHandler


def serve_wsgiref(port: int, with_fastwrap: bool) -> None:
    """Stock ``wsgiref.simple_server`` (one thread, HTTP/1.0), optionally with install()."""
    from wsgiref import simple_server
    if with_fastwrap:
        import fastwrap.wsgiref
        fastwrap.wsgiref.install()
    server = simple_server.make_server("127.0.0.1", port, app,
                                       handler_class=_quiet_wsgiref_handler())
    server.serve_forever()


def serve_fastwrap_wsgiref(port: int, threads: int) -> None:
    """fastwrap's own threaded HTTP/1.1 wsgiref server (before ``fastwrap serve`` existed)."""
    import fastwrap.wsgiref

    class Quiet(fastwrap.wsgiref.RequestHandler):
        def log_message(self, *args):
            pass

    fastwrap.wsgiref.make_server("127.0.0.1", port, app, threads=threads,
                                 handler=Quiet).serve_forever()


def serve_static_threaded(port: int, threads: int) -> None:
    """``fastwrap serve`` as it was before its event-loop core: StaticFiles on the threads."""
    import fastwrap.static
    import fastwrap.wsgiref

    class Quiet(fastwrap.wsgiref.RequestHandler):
        quiet = True

    static = fastwrap.static.StaticFiles(ROOT)
    fastwrap.wsgiref.make_server("127.0.0.1", port, static, threads=threads,
                                 handler=Quiet).serve_forever()


def serve_gevent(port: int) -> None:
    """fastwrap.gevent.WSGIServer: one process, one greenlet per connection."""
    import fastwrap.gevent
    fastwrap.gevent.WSGIServer(("127.0.0.1", port), app, log=None).serve_forever()


def serve_waitress(port: int, threads: int) -> None:
    """waitress with its default channel settings and *threads* worker threads."""
    import waitress
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)


def serve_cheroot(port: int, threads: int, fastwrap_engine: str = "") -> None:
    """cheroot's WSGI server with *threads* worker threads.

    *fastwrap_engine* empty: stock cheroot, which offers no
    ``wsgi.file_wrapper``: the application gets the stdlib's, as a framework
    falls back to its own, and cheroot iterates it.  ``"cython"`` or
    ``"python"``: ``fastwrap.cheroot.Server`` with that engine.
    """
    if fastwrap_engine == "python":
        os.environ["FASTWRAP_NO_EXTENSIONS"] = "1"  # before fastwrap is imported
    if fastwrap_engine:
        import fastwrap.cheroot
        server = fastwrap.cheroot.Server(("127.0.0.1", port), app, numthreads=threads)
    else:
        import wsgiref.util

        import cheroot.wsgi

        def stock_app(environ, start_response):
            environ.setdefault("wsgi.file_wrapper", wsgiref.util.FileWrapper)
            return app(environ, start_response)

        server = cheroot.wsgi.Server(("127.0.0.1", port), stock_app, numthreads=threads)
    server.start()


def main(argv: list) -> None:
    kind, port = argv[0], int(argv[1])
    threads = int(argv[2]) if len(argv) > 2 else 4
    if kind == "wsgiref":
        serve_wsgiref(port, with_fastwrap=False)
    elif kind == "wsgiref-install":
        serve_wsgiref(port, with_fastwrap=True)
    elif kind == "fastwrap-wsgiref":
        serve_fastwrap_wsgiref(port, threads)
    elif kind == "static-threaded":
        serve_static_threaded(port, threads)
    elif kind == "gevent":
        serve_gevent(port)
    elif kind == "waitress":
        serve_waitress(port, threads)
    elif kind == "cheroot":
        serve_cheroot(port, threads)
    elif kind in ("cheroot-fastwrap", "cheroot-fastwrap-python"):
        serve_cheroot(port, threads, "python" if kind.endswith("python") else "cython")
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
