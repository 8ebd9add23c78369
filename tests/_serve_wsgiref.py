"""The stdlib-based servers of ``_servers`` in a child process, with the engine asked for.

``_servers``' launchers run their server in the test's own process, with the
engine that process imported.  ``serve_wsgiref(form, app_ref, env)`` runs the
same launcher (``form`` is a key of ``_servers.LAUNCHERS``: ``wsgiref-installed``
or ``make_server``) in a fresh interpreter, so that ``env`` can choose the
engine (``FASTWRAP_NO_EXTENSIONS=1``); it yields the base URL once the server
answers and stops the child by its pid at exit.

Run as a script, this file *is* the child: ``python _serve_wsgiref.py FORM
APP_REF`` prints the port, then serves until terminated.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, Optional

from _children import HANG, child_env, stop, wait_until_answering


@contextlib.contextmanager
def serve_wsgiref(form: str, app_ref: str,
                  env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """Serve *app_ref* with ``_servers.LAUNCHERS[form]`` in a child; yield its base URL."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), form, app_ref],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=child_env(env))
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the child prints its port once bound
            if not line:
                proc.wait(HANG)
                err.seek(0)
                raise RuntimeError(f"{form} server did not start:\n{err.read().decode()}")
            port = int(line)
            wait_until_answering(port, proc, lambda: f"{form} server")
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)


def _child(form: str, app_ref: str) -> None:
    from _servers import LAUNCHERS

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    with LAUNCHERS[form](app_ref) as url:
        sys.stdout.write(f"{url.rsplit(':', 1)[1]}\n")
        sys.stdout.flush()
        stopping.wait()


if __name__ == "__main__":
    _child(*sys.argv[1:])
