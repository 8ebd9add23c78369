"""A real gevent.pywsgi server with fastwrap.gevent.WSGIHandler, in a subprocess.

gevent's monkey-patching must not leak into the pytest process, so the
server runs in a child interpreter: ``serve_gevent(app_ref)`` starts it on a
free port of 127.0.0.1, waits until it answers, yields its base URL and
terminates it at exit.  The app is wrapped with ``_servers.with_stats`` so
``GET /__stats__`` reports the server process's ``fastwrap.stats()``.

The URL it yields is a ``str`` that also carries ``access_log`` (pywsgi's
request log: one line per request, with the byte count) and ``error_log``
(the child's stderr, where fastwrap logs a short file) paths.

Run as a script, this file *is* the child: ``python _serve_gevent.py APP_REF
ACCESS_LOG FORM [CERTFILE KEYFILE]``; it prints its port on stdout and serves until
terminated.  FORM is how the server gets fastwrap's handler: ``handler_class``
(gevent's WSGIServer, told the handler) or ``preset`` (fastwrap.gevent.WSGIServer).
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from _children import HANG, child_env, stop, wait_until_answering


class ServerURL(str):
    """A base URL that also tells where the server's logs are."""

    access_log: Path
    error_log: Path

    @property
    def port(self) -> int:
        return int(self.rsplit(":", 1)[1])

    def access_lines(self) -> list:
        return self.access_log.read_text().splitlines()


@contextlib.contextmanager
def serve_gevent(app_ref: str, env: Optional[Dict[str, str]] = None,
                 tls: Optional[Tuple[str, str]] = None,
                 form: str = "handler_class") -> Iterator[ServerURL]:
    """Serve *app_ref* (``"module:attribute"`` importable from tests/) with gevent.

    *env* is added to the child's environment (e.g. ``FASTWRAP_NO_EXTENSIONS=1``);
    *tls* = (certfile, keyfile) serves HTTPS (the URL then says https, and
    the launcher's readiness probe is skipped: the caller probes with its
    own TLS context); *form* is how the server gets fastwrap's handler (see
    the module's docstring).
    """
    logdir = Path(tempfile.mkdtemp(prefix="fastwrap-gevent-"))
    access_log = logdir / "access.log"
    error_log = logdir / "error.log"
    with open(error_log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), app_ref, str(access_log),
             form, *(tls or ())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=child_env(env))
    try:
        line = proc.stdout.readline()  # the child prints its port once bound
        if not line:
            proc.wait(HANG)
            raise RuntimeError(f"gevent server did not start:\n{error_log.read_text()}")
        url = ServerURL(f"{'https' if tls else 'http'}://127.0.0.1:{int(line)}")
        url.access_log = access_log
        url.error_log = error_log
        if not tls:
            wait_until_answering(url.port, proc, error_log.read_text)
        yield url
    finally:
        stop(proc)
        for path in (access_log, error_log):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            logdir.rmdir()


def _child(app_ref: str, access_log: str, form: str, *tls: str) -> None:
    from gevent import monkey
    monkey.patch_all()

    import logging

    import gevent
    from gevent.pywsgi import WSGIServer

    import fastwrap.gevent
    from _servers import load, with_stats

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")
    log = open(access_log, "a", buffering=1)
    ssl_args = {"certfile": tls[0], "keyfile": tls[1]} if tls else {}
    app = with_stats(load(app_ref))
    if form == "preset":  # the one-line way in
        server = fastwrap.gevent.WSGIServer(("127.0.0.1", 0), app, log=log, **ssl_args)
    else:
        server = WSGIServer(("127.0.0.1", 0), app, log=log,
                            handler_class=fastwrap.gevent.WSGIHandler, **ssl_args)
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop)
    sys.stdout.write(f"{server.server_port}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    _child(*sys.argv[1:])
