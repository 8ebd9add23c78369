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
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

HERE = Path(__file__).resolve().parent
HANG = 60.0  # a guard against hanging the run, never an assertion on time


def _src_dir() -> str:
    import importlib.util
    spec = importlib.util.find_spec("fastwrap")
    assert spec is not None and spec.origin is not None
    return str(Path(spec.origin).resolve().parents[1])


@contextlib.contextmanager
def serve_wsgiref(form: str, app_ref: str,
                  env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """Serve *app_ref* with ``_servers.LAUNCHERS[form]`` in a child; yield its base URL."""
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE")}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [_src_dir(), str(HERE)]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    child_env.update(env or {})
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), form, app_ref],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=child_env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the child prints its port once bound
            if not line:
                proc.wait(HANG)
                err.seek(0)
                raise RuntimeError(f"{form} server did not start:\n{err.read().decode()}")
            port = int(line)
            _wait_until_answering(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(HANG)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(HANG)
            if proc.stdout is not None:
                proc.stdout.close()


def _wait_until_answering(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
        try:
            conn.request("GET", "/__stats__")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server (pid {proc.pid}) is not answering")
        time.sleep(0.05)


def _child(form: str, app_ref: str) -> None:
    from _servers import LAUNCHERS

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with LAUNCHERS[form](app_ref) as url:
        sys.stdout.write(f"{url.rsplit(':', 1)[1]}\n")
        sys.stdout.flush()
        stop.wait()


if __name__ == "__main__":
    _child(*sys.argv[1:])
