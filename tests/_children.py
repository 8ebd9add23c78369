"""What the launchers of servers in child processes share (``_serve_*.py``).

A child imports fastwrap from the same place as the tests do and the test
helpers from tests/, with the engine the caller asks for in its environment
(``FASTWRAP_NO_EXTENSIONS=1`` for the pure one); the launcher waits until the
child answers ``GET /__stats__`` and, at the end, stops it by its pid.
"""
from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Optional

HERE = Path(__file__).resolve().parent
HANG = 60.0  # a guard against hanging the run, never an assertion on time


def src_dir() -> str:
    """The directory fastwrap is imported from here (src/ in a checkout)."""
    spec = importlib.util.find_spec("fastwrap")
    assert spec is not None and spec.origin is not None
    return str(Path(spec.origin).resolve().parents[1])


def child_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This environment without engine choices, with fastwrap and tests/ importable, plus *env*."""
    result = {k: v for k, v in os.environ.items()
              if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE")}
    result["PYTHONPATH"] = os.pathsep.join(
        [src_dir(), str(HERE)]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    result.update(env or {})
    return result


def wait_until_answering(port: int, proc: subprocess.Popen, why: Callable[[], str]) -> None:
    """Until the child on *port* answers ``GET /__stats__``; RuntimeError(why()) if it never does."""
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
            raise RuntimeError(f"server (pid {proc.pid}) is not answering: {why()}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the child by its pid, SIGKILL if it does not end; close its stdout."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(HANG)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(HANG)
    if proc.stdout is not None:
        proc.stdout.close()
