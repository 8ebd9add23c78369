"""The processes the bench starts: servers and helpers, and the bench's handle on each helper."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import BinaryIO, Sequence

import fastwrap

from .model import HANG, BenchError


# -- the processes the bench starts -----------------------------------------------

# A helper process: `python -c HELPER_CODE ROLE FD`, taking orders over a socketpair.
HELPER_CODE = ("import sys; from fastwrap._bench.helper_loops import helper_main; "
               "sys.exit(helper_main(sys.argv[1:]))")

# Runs `python -m MODULE ARGS...` in a process that exits when its stdin closes,
# so that no server outlives the bench, even one killed without a chance to clean up.
_WATCHDOG = (
    "import os, sys, threading\n"
    "def _watch():\n"
    "    sys.stdin.buffer.read()\n"
    "    os._exit(0)\n"
    "threading.Thread(target=_watch, daemon=True).start()\n"
)
RUN_MODULE_CODE = _WATCHDOG + (
    "import runpy\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)
# The stock wsgiref.simple_server (one request per connection, one connection at
# a time) with its stock handler, serving StaticFiles; its log goes to DEVNULL.
WSGIREF_CODE = _WATCHDOG + (
    "from wsgiref.simple_server import make_server\n"
    "from fastwrap.static import StaticFiles\n"
    "server = make_server('127.0.0.1', 0, StaticFiles(sys.argv[1]))\n"
    "print('listening on port', server.server_address[1], flush=True)\n"
    "server.serve_forever()\n"
)


def _child_env() -> dict[str, str]:
    """The environment of every child: it imports this very fastwrap."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastwrap.__file__)))
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([here] + rest)
    return env


def _tail(path: str, limit: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text[-limit:]


class Children:
    """Every process the bench starts; stop() ends them all, however the bench ends.

    Children start in sessions of their own, so Ctrl-C reaches only the bench,
    which then stops them in order instead of leaving each to print a traceback.
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self._processes: list[subprocess.Popen[bytes]] = []
        self._files: list[BinaryIO] = []

    def start(self, name: str, argv: Sequence[str], *, stdout_to_log: bool = False,
              stderr_to_log: bool = True, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        """Start *argv* with its output in log(*name*) or DEVNULL, and stdin a pipe.

        The servers that log every request log to DEVNULL: only the line
        saying where they listen is needed, and they print it on stdout.
        """
        log = open(self.log(name), "wb")
        self._files.append(log)
        process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE,
            stdout=log if stdout_to_log else subprocess.DEVNULL,
            stderr=log if stderr_to_log else subprocess.DEVNULL,
            pass_fds=tuple(pass_fds), env=_child_env(), start_new_session=True)
        self._processes.append(process)
        return process

    def log(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def stop(self) -> None:
        for process in self._processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.terminate()
        deadline = time.monotonic() + 5
        for process in self._processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for log in self._files:
            log.close()
        self._files.clear()


class Helper:
    """A helper process (drain, feed or client) and the socketpair that gives it orders.

    It exits when the socketpair closes, so it cannot outlive the bench.
    """

    def __init__(self, children: Children, role: str, name: str) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.process = children.start(
                name, [sys.executable, "-c", HELPER_CODE, role, str(theirs.fileno())],
                pass_fds=[theirs.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.settimeout(HANG)
        self.ctl = mine
        self.name = name
        self._log = children.log(name)
        self._lines = mine.makefile("rb")

    def died(self, what: str) -> BenchError:
        code = self.process.poll()
        state = "is gone" if code is None else f"exited with status {code}"
        tail = _tail(self._log)
        return BenchError(f"the {self.name} helper {state} {what}" + (f": {tail}" if tail else ""))

    def send_fd(self, message: bytes, fd: int) -> None:
        try:
            socket.send_fds(self.ctl, [message], [fd])
        except OSError:
            raise self.died("before taking an order") from None

    def send_line(self, line: str) -> None:
        try:
            self.ctl.sendall(line.encode("utf-8") + b"\n")
        except OSError:
            raise self.died("before taking an order") from None

    def read_line(self) -> str:
        try:
            line = self._lines.readline()
        except OSError:
            line = b""
        if not line.endswith(b"\n"):
            raise self.died("before answering")
        return line.decode("utf-8").rstrip("\n")

    def close(self) -> None:
        self._lines.close()
        self.ctl.close()
