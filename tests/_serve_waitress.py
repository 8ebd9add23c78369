"""A real waitress server, stock or with fastwrap.waitress, in a subprocess.

``serve_waitress(app_ref, kind)`` starts it on a free port of 127.0.0.1,
waits until it answers, yields its base URL (a :class:`ServerURL`, which
also has the server's ``pid`` and ``error_log``: its stderr, where waitress's
logger writes at DEBUG level) and stops it by its pid at exit.

Run as a script, this file *is* the child: ``python _serve_waitress.py
APP_REF KIND [NAME=VALUE...]``, KIND ``stock`` (waitress.create_server) or
``fastwrap`` (fastwrap.waitress.create_server), the rest waitress
adjustments; it prints its port on stdout and serves until terminated.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional

from _children import child_env, stop, wait_until_answering


class ServerURL(str):
    """A base URL that also tells the server's pid and where its log is."""

    pid: int
    error_log: Path

    @property
    def port(self) -> int:
        return int(self.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.error_log.read_text()


@contextlib.contextmanager
def serve_waitress(app_ref: str, kind: str, env: Optional[Dict[str, str]] = None,
                   **adjustments: object) -> Iterator[ServerURL]:
    """Serve *app_ref* (``"module:attribute"`` importable from tests/) with waitress."""
    logdir = Path(tempfile.mkdtemp(prefix="fastwrap-waitress-"))
    error_log = logdir / "error.log"
    args = [f"{k}={v}" for k, v in adjustments.items()]
    with open(error_log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), app_ref, kind, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=child_env(env))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"waitress did not start: {line!r}\n{error_log.read_text()}")
        url = ServerURL(f"http://127.0.0.1:{line}")
        url.pid = proc.pid
        url.error_log = error_log
        wait_until_answering(url.port, proc, error_log.read_text)
        yield url
    finally:
        stop(proc)


def _child(app_ref: str, kind: str, settings: list) -> None:
    import importlib

    # Every file response's debug line, and waitress's own logging.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(levelname)s:%(name)s:%(message)s")
    logging.getLogger("waitress").setLevel(logging.DEBUG)
    module, _, attribute = app_ref.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    kw = dict(s.split("=", 1) for s in settings)
    if kind == "fastwrap":
        import fastwrap.waitress
        server = fastwrap.waitress.create_server(app, listen="127.0.0.1:0", **kw)
    else:
        import waitress
        server = waitress.create_server(app, listen="127.0.0.1:0", **kw)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # waitress.run() closes on SystemExit
    print(server.effective_port, flush=True)
    server.run()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3:])
