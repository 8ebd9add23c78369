"""The suite passes however it is started: no standard input, SIGINT and SIGHUP ignored.

CI runs it with standard input closed; a script that starts it in the
background, ``trap '' INT`` or ``nohup`` leaves SIGINT (SIGHUP) ignored, and
every child inherits that.  The tests that stop a child with Ctrl-C must
still work then: a few of them run here in a pytest started that way.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _support import HANG, needs_linux

TESTS = Path(__file__).resolve().parent

#: One of each kind: `fastwrap serve` stopped by SIGINT, a transmission
#: interrupted by it, the bench cleaning up after it.  The pure engine only:
#: the signal's disposition is the same for both.
SENSITIVE = [
    "test_serve.py::test_interrupt_stops_the_server_cleanly[pure-python-module]",
    "test_failures.py::test_ctrl_c_interrupts_a_transmission_blocked_on_a_stalled_peer"
    "[pure-python-module-readinto]",
    "test_bench.py::test_ctrl_c_stops_every_child_and_removes_the_files",
]

#: Starts pytest as a shell would with ``trap '' INT; nohup pytest 0<&-``.
AS_IF_IN_THE_BACKGROUND = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    "os.close(0)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'pytest', *sys.argv[1:]])\n"
)


@needs_linux
def test_ctrl_c_tests_pass_with_stdin_closed_and_sigint_ignored(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", AS_IF_IN_THE_BACKGROUND, "-x", "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "inner"), *(str(TESTS / test) for test in SENSITIVE)],
        cwd=TESTS.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=5 * HANG)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert summary.startswith(f"{len(SENSITIVE)} passed"), proc.stdout[-6000:]
