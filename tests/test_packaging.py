"""The sdist and wheels: they build, check, and install with or without a compiler.

Installing from the sdist where no C compiler works (or with
FASTWRAP_NO_EXTENSIONS=1 set at build time) must succeed with the
pure-Python engine and say so in one line.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTICE = "fastwrap: compiled engine not built"
OPT_OUT = "fastwrap: FASTWRAP_NO_EXTENSIONS is set"

pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file() or not (ROOT / "src" / "fastwrap").is_dir(),
    reason="the source tree is not beside the tests (testing an installed wheel)")


def run(args: list, env: dict = None, cwd: Path = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env={**os.environ, **(env or {})}, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
         str(ROOT)])
    (archive,) = out.glob("fastwrap-*.tar.gz")
    return archive


def fresh_venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / ("Scripts" if os.name == "nt" else "bin") / "python"


def implementation(python: Path) -> str:
    return run([str(python), "-c", "import fastwrap; print(fastwrap.IMPLEMENTATION)"],
               cwd=python.parent).stdout.strip()


def test_sdist_holds_the_sources_and_passes_twine_check(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {Path(name).name for name in tar.getnames()}
    assert {"_fastwrap.pyx", "_platform.h", "_fastwrap.pyi", "py.typed", "_purepy.py",
            "README.rst", "pyproject.toml", "setup.py"} <= names
    assert not any(name.endswith((".so", ".c")) for name in names)
    run([sys.executable, "-m", "twine", "check", "--strict", str(sdist)])


def test_sdist_installs_the_compiled_engine_with_a_compiler(sdist: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    run([str(python), "-m", "pip", "install", "-q", str(sdist)])
    assert implementation(python) == "cython"


def test_sdist_installs_pure_python_without_a_compiler(sdist: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    # No working C compiler: every compile and link fails at once.
    no_compiler = {"CC": "false", "CXX": "false", "LDSHARED": "false"}
    proc = run([str(python), "-m", "pip", "install", "-v", str(sdist)], env=no_compiler)
    assert NOTICE in proc.stdout
    assert implementation(python) == "python"


def test_no_extensions_at_build_time_installs_pure_python(sdist: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    proc = run([str(python), "-m", "pip", "install", "-v", str(sdist)],
               env={"FASTWRAP_NO_EXTENSIONS": "1"})
    assert OPT_OUT in proc.stdout
    assert implementation(python) == "python"


def test_wheel_builds_with_the_extension_and_passes_twine_check(tmp_path: Path) -> None:
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
         str(tmp_path), str(ROOT)])
    (wheel,) = tmp_path.glob("fastwrap-*.whl")
    import zipfile
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(name.startswith("fastwrap/_fastwrap") and name.endswith((".so", ".pyd"))
               for name in names), names
    assert "fastwrap/py.typed" in names and "fastwrap/_fastwrap.pyi" in names
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)])


@pytest.mark.parametrize("platform, expected", [
    ("linux", [f"cp3{minor}-{libc}_{arch}" for minor in range(9, 14)
               for libc in ("manylinux", "musllinux") for arch in ("x86_64", "aarch64")]),
    ("macos", [f"cp3{minor}-macosx_{arch}" for minor in range(9, 14)
               for arch in ("x86_64", "arm64")]),
    ("windows", [f"cp3{minor}-win_amd64" for minor in range(9, 14)]),
])
def test_cibuildwheel_builds_every_platform_and_python(platform: str, expected: list) -> None:
    pytest.importorskip("cibuildwheel", reason="cibuildwheel is in the project's test extra")
    proc = run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
                "--platform", platform], cwd=ROOT)
    identifiers = set(proc.stdout.split())
    assert set(expected) <= identifiers, sorted(set(expected) - identifiers)
    assert not any("pp" in name or "i686" in name or "win32" in name for name in identifiers)
