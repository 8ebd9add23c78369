"""The integrations' optional dependencies: the extras bring them, and a missing one is one line.

Each command runs for real in a child interpreter where the dependency is
absent: a finder placed first on ``sys.meta_path`` before anything else is
imported answers for it, and its submodules, exactly what the import system
says of a module that is not installed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11: pytest itself depends on tomli there
    import tomli as tomllib

from packaging.requirements import Requirement

TESTS = Path(__file__).resolve().parent
PYPROJECT = TESTS.parent / "pyproject.toml"


ABSENT = """
import sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name == {0!r} or name.startswith({0!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
"""


def run_without(module: str, program: str, *args: str) -> List[str]:
    """stderr's lines of *program* run where *module* is not installed; it must fail."""
    blocked = ABSENT.format(module) + program
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", blocked, *args], cwd=TESTS, env=environ,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stderr
    return proc.stderr.rstrip("\n").splitlines()


def test_uvicorn_command_without_httptools_says_what_to_install():
    pytest.importorskip("uvicorn", reason="uvicorn is in the project's test extra")
    # What the `uvicorn` console script runs, with the README's first command line.
    lines = run_without("httptools", "from uvicorn.main import main; sys.exit(main())",
                        "_asgi_apps:app", "--http", "fastwrap.uvicorn:HttpToolsProtocol",
                        "--host", "127.0.0.1", "--port", "0")
    assert lines[-1] == ("fastwrap.uvicorn:HttpToolsProtocol needs httptools, which is not "
                         "installed: pip install 'fastwrap[uvicorn]' "
                         "(or name fastwrap.uvicorn:H11Protocol)")
    assert not any("Traceback" in line for line in lines), "\n".join(lines)


def test_fastwrap_uvicorn_without_uvicorn_says_what_to_install():
    lines = run_without("uvicorn", "import fastwrap.uvicorn")
    assert lines == ["fastwrap.uvicorn needs uvicorn, which is not installed: "
                     "pip install 'fastwrap[uvicorn]'"]


@pytest.mark.parametrize("program", ["import fastwrap.hypercorn",
                                     "import runpy; runpy.run_module('fastwrap.hypercorn', "
                                     "run_name='__main__')"])
def test_fastwrap_hypercorn_without_hypercorn_says_what_to_install(program):
    # The import, and the README's command line (python -m fastwrap.hypercorn).
    lines = run_without("hypercorn", program)
    assert lines == ["fastwrap.hypercorn needs hypercorn, which is not installed: "
                     "pip install 'fastwrap[hypercorn]'"]


def test_hypercorn_extra_brings_what_the_readme_commands_need():
    with open(PYPROJECT, "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    hypercorn = {req.name: req for req in map(Requirement, extras["hypercorn"])}
    assert set(hypercorn) == {"hypercorn"}
    # The oldest hypercorn fastwrap.hypercorn was tested with.
    assert hypercorn["hypercorn"].specifier.contains("0.17.3")


@pytest.mark.parametrize("module", ["gunicorn", "gevent", "waitress"])
def test_wsgi_integrations_without_their_server_say_what_to_install(module):
    lines = run_without(module, f"import fastwrap.{module}")
    # One line, as for uvicorn's: no traceback of the import above it.
    assert lines == [f"fastwrap.{module} needs {module}, which is not installed: "
                     f"pip install {module}"]


def test_fastwrap_cheroot_without_cheroot_says_what_to_install():
    lines = run_without("cheroot", "import fastwrap.cheroot")
    assert lines == ["fastwrap.cheroot needs cheroot, which is not installed: "
                     "pip install 'fastwrap[cheroot]'"]


def test_cheroot_extra_brings_cheroot_and_the_tests_get_it_too():
    with open(PYPROJECT, "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for extra in ("cheroot", "test"):
        assert "cheroot" in {Requirement(r).name for r in extras[extra]}, extra


def test_uvicorn_extra_brings_what_the_readme_commands_need():
    with open(PYPROJECT, "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    uvicorn = {req.name: req for req in map(Requirement, extras["uvicorn"])}
    # uvicorn (and h11 with it) for :H11Protocol and the worker, httptools for
    # :HttpToolsProtocol, nothing the commands do not use.
    assert set(uvicorn) == {"uvicorn", "httptools"}
    assert uvicorn["uvicorn"].specifier.contains("0.30") and \
        not uvicorn["uvicorn"].specifier.contains("0.29")
