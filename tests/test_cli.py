"""python -m fastwrap: info (the engine and the paths it can take), and the command line
as a user meets it: --version, usage errors, a mistyped FASTWRAP_DISABLE, a closed pipe."""
from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys

import pytest
from _static_support import engine_env, run_cli
from _support import HANG, run_python

import fastwrap

INFO = "import sys, runpy; sys.argv = ['fastwrap', *sys.argv[1:]]; " \
       "runpy.run_module('fastwrap', run_name='__main__')"


#: What `info` says of each engine when the suite selects it (the pure one by
#: FASTWRAP_NO_EXTENSIONS, as _env does).
ENGINE_NOTES = {"cython": "cython (the compiled extension)",
                "python": "python (FASTWRAP_NO_EXTENSIONS is set)"}


def _env(engine, **extra):
    env = {"FASTWRAP_NO_EXTENSIONS": "1"} if engine.IMPLEMENTATION == "python" else {}
    env.update(extra)
    return env


def _paths_section(stdout):
    lines = stdout.splitlines()
    start = lines.index("paths:")
    return dict(line.split(None, 1) for line in lines[start + 1:] if line.strip())


def test_info_prints_implementation_and_every_path(engine):
    proc = run_python(INFO, env=_env(engine), args=["info"])
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith(f"implementation: {engine.IMPLEMENTATION} (")
               for line in proc.stdout.splitlines())
    assert f"fastwrap {fastwrap.__version__}" in proc.stdout
    states = _paths_section(proc.stdout)
    assert list(states) == list(fastwrap.PATHS)
    for path in fastwrap.PATHS:
        available = path in engine.SUPPORTED_PATHS
        assert (states[path] == "available") is available, (path, states[path])


def test_info_reports_disabled_paths(engine):
    proc = run_python(INFO, env=_env(engine, FASTWRAP_DISABLE="sendfile,mmap"), args=["info"])
    assert proc.returncode == 0, proc.stderr
    states = _paths_section(proc.stdout)
    assert "disabled" in states["sendfile"] and "disabled" in states["mmap"]
    assert states["read"] == "available"


def test_python_dash_m_fastwrap_info_runs(engine):
    proc = run_python("import subprocess, sys; sys.exit(subprocess.call("
                      "[sys.executable, '-m', 'fastwrap', 'info']))", env=_env(engine))
    assert proc.returncode == 0, proc.stderr
    assert f"implementation: {ENGINE_NOTES[engine.IMPLEMENTATION]}" in proc.stdout


def test_no_command_is_a_usage_error(engine):
    proc = run_python(INFO, env=_env(engine))
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()


def test_info_names_version_python_platform_and_kernel(engine):
    proc = run_python(INFO, env=_env(engine), args=["info"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:6] == [
        f"fastwrap {fastwrap.__version__}",
        f"implementation: {ENGINE_NOTES[engine.IMPLEMENTATION]}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"platform: {sys.platform} {platform.machine()}",
        f"kernel: {platform.system()} {platform.release()}",
        "paths:",
    ]


def test_info_says_sendfile_is_unavailable_because_of_fastwrap_disable(engine):
    proc = run_python(INFO, env=_env(engine, FASTWRAP_DISABLE="sendfile"), args=["info"])
    assert proc.returncode == 0, proc.stderr
    states = _paths_section(proc.stdout)
    assert states["sendfile"] == "unavailable: disabled by FASTWRAP_DISABLE"
    others = [path for path in fastwrap.PATHS if path != "sendfile"]
    assert {path: states[path] == "available" for path in others} == {
        path: path in engine.SUPPORTED_PATHS for path in others}


def test_info_names_fastwrap_disable_however_it_spells_the_path(engine):
    # FASTWRAP_DISABLE is read without regard to case or spaces: so is its mention.
    proc = run_python(INFO, env=_env(engine, FASTWRAP_DISABLE=" Sendfile , MMAP"), args=["info"])
    assert proc.returncode == 0, proc.stderr
    states = _paths_section(proc.stdout)
    assert states["sendfile"] == "unavailable: disabled by FASTWRAP_DISABLE"
    assert states["mmap"] == "unavailable: disabled by FASTWRAP_DISABLE"


# -- the command line as a user of `python -m http.server` meets it --------------------------

def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastwrap: "), lines[0]
    return lines[0]


def test_version(engine):
    proc = run_cli(engine, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fastwrap {fastwrap.__version__}"


@pytest.mark.parametrize("command", ["serve", "info", "bench"])
def test_an_unknown_option_shows_the_usage_of_its_command(engine, command):
    proc = run_cli(engine, command, "--no-such-option", timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: fastwrap {command} "), proc.stderr
    assert lines[-1] == f"fastwrap {command}: error: unrecognized arguments: --no-such-option"


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["info"], ["bench", "--quick"]])
def test_a_mistyped_fastwrap_disable_is_one_line_not_a_traceback(engine, command):
    # As `python -m fastwrap`, and as the `fastwrap` script (its argv[0]).
    for proc in (subprocess.run([sys.executable, "-m", "fastwrap", *command],
                                env=engine_env(engine, FASTWRAP_DISABLE="sendfil"),
                                capture_output=True, text=True, timeout=HANG),
                 run_python(INFO, env=_env(engine, FASTWRAP_DISABLE="sendfil"), args=command)):
        assert proc.returncode == 2, proc.stderr
        line = _one_line(proc.stderr)
        assert "FASTWRAP_DISABLE='sendfil'" in line and "sendfile" in line, line
        assert proc.stdout == ""


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE here")
def test_info_into_a_closed_pipe_ends_quietly_as_a_unix_tool_does(engine):
    # `fastwrap info | head -1`, with head gone before fastwrap writes: like
    # `yes | head -1`, it ends by SIGPIPE (status 141 in a shell), saying nothing.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = subprocess.run([sys.executable, "-m", "fastwrap", "info"], stdout=writer,
                              stderr=subprocess.PIPE, text=True, env=engine_env(engine),
                              timeout=HANG)
    finally:
        os.close(writer)
    assert proc.stderr == ""
    assert proc.returncode == -signal.SIGPIPE
