"""Which engine the package uses, and that both engines expose the same names."""
from __future__ import annotations

import importlib.machinery
import os
import sys

import pytest

import fastwrap
from _support import LINUX, run_python
from conftest import C_ENGINE, PY_ENGINE, import_compiled_engine

ENGINE_NAMES = ("FileWrapper", "Transmission", "transmit", "transmit_file", "select_path",
                "available_paths", "SUPPORTED_PATHS", "IMPLEMENTATION")
PUBLIC = ("FileWrapper", "Transmission", "transmit", "select_path", "available_paths",
          "IMPLEMENTATION", "PATHS", "disable", "enable", "__version__")
FORCED_PURE = os.environ.get("FASTWRAP_NO_EXTENSIONS", "") not in ("", "0")


def test_compiled_engine_is_built(request):
    """On Linux the compiled engine must exist: a missing one fails here."""
    if not LINUX:
        pytest.skip(f"the compiled engine is optional on {sys.platform}")
    if request.config.getoption("--no-c-extensions"):
        pytest.skip("compiled engine left out by --no-c-extensions")
    module = import_compiled_engine()
    assert module is not None, (
        "fastwrap._fastwrap is not built: run `python setup.py build_ext --inplace` "
        "or `pip install .`")
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert module.IMPLEMENTATION == "cython"


def test_package_uses_the_compiled_engine_unless_told_not_to():
    if FORCED_PURE:
        assert fastwrap.IMPLEMENTATION == "python"
        assert fastwrap.FileWrapper is sys.modules[PY_ENGINE].FileWrapper
        return
    compiled = import_compiled_engine()
    if compiled is None:  # on Linux test_compiled_engine_is_built fails for this
        assert fastwrap.IMPLEMENTATION == "python"
        return
    assert fastwrap.IMPLEMENTATION == "cython"
    assert fastwrap.FileWrapper is compiled.FileWrapper
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_package_names_are_bound_to_the_chosen_engine():
    module = sys.modules[C_ENGINE if fastwrap.IMPLEMENTATION == "cython" else PY_ENGINE]
    for name in ("FileWrapper", "Transmission", "transmit", "select_path",
                 "available_paths", "IMPLEMENTATION"):
        assert getattr(fastwrap, name) is getattr(module, name), name


def test_package_exposes_the_public_api():
    for name in PUBLIC:
        assert hasattr(fastwrap, name), name
        assert name in fastwrap.__all__ or name.startswith("__"), name
    assert isinstance(fastwrap.__version__, str) and fastwrap.__version__.count(".") >= 1


def test_package_exposes_its_public_api():
    for name in fastwrap.__all__:
        assert hasattr(fastwrap, name), name
    engine_names = {"FileWrapper", "Transmission", "transmit", "select_path",
                    "available_paths", "IMPLEMENTATION"}
    assert engine_names <= set(fastwrap.__all__)


def test_engine_exports_the_whole_namespace(engine):
    for name in ENGINE_NAMES:
        assert hasattr(engine, name), name
    assert engine.IMPLEMENTATION == ("cython" if engine.__name__ == C_ENGINE else "python")
    assert isinstance(engine.FileWrapper, type) and isinstance(engine.Transmission, type)
    assert isinstance(engine.available_paths(), tuple)


def test_public_names_have_docstrings(engine):
    for name in ("FileWrapper", "Transmission", "transmit", "transmit_file", "select_path",
                 "available_paths"):
        assert getattr(engine, name).__doc__, name


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_extensions_environment_variable_forces_the_pure_engine(value):
    proc = run_python(
        "import sys, fastwrap\n"
        "print(fastwrap.IMPLEMENTATION, fastwrap.FileWrapper.__module__,"
        " 'fastwrap._fastwrap' in sys.modules)",
        env={"FASTWRAP_NO_EXTENSIONS": value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "fastwrap._purepy", "False"]


def test_no_extensions_zero_does_not_force_the_pure_engine():
    proc = run_python("import fastwrap; print(fastwrap.IMPLEMENTATION)",
                      env={"FASTWRAP_NO_EXTENSIONS": "0"})
    assert proc.returncode == 0, proc.stderr
    expected = "cython" if import_compiled_engine() is not None else "python"
    assert proc.stdout.strip() == expected
