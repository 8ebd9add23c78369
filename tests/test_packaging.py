"""The sdist and wheels: they build, check, and install with or without a compiler.

Installing from the sdist where no C compiler works (or with
FASTWRAP_NO_EXTENSIONS=1 set at build time) must succeed with the
pure-Python engine and say so in one line; where the compile failed, the
first import says it too, since pip shows a build's output only with -v.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTICE = "fastwrap: compiled engine not built"
OPT_OUT = "fastwrap: FASTWRAP_NO_EXTENSIONS is set"
IMPORT_NOTICE = "fastwrap: the compiled engine was not built when fastwrap was installed"

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


def first_import(python: Path, **env: str) -> tuple:
    """The engine an installed fastwrap uses, and what importing it printed on stderr."""
    environ = {k: v for k, v in os.environ.items() if k != "FASTWRAP_NO_EXTENSIONS"}
    proc = subprocess.run([str(python), "-c", "import fastwrap; print(fastwrap.IMPLEMENTATION)"],
                          env={**environ, **env}, cwd=python.parent, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip(), proc.stderr.strip()


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
    assert first_import(python) == ("cython", "")
    _readme_run_command_serves(python.parent, tmp_path)


def _readme_commands() -> tuple[str, list[str]]:
    """The README's install-and-run command, and the curl lines that follow it."""
    lines = [line.strip() for line in (ROOT / "README.rst").read_text().splitlines()]
    run_line = next(line for line in lines if line.startswith("python3 -m venv")
                    and "fastwrap serve" in line)
    curls = [line for line in lines if line.startswith("curl ")][:3]
    return run_line, curls


def _readme_run_command_serves(bin_dir: Path, tmp_path: Path) -> None:
    """The README's `fastwrap serve .`, as installed, answers its three curl lines."""
    run_line, curls = _readme_commands()
    assert run_line.endswith(".venv/bin/fastwrap serve ."), run_line
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed: the README's curl lines cannot be run")
    served = tmp_path / "served"
    served.mkdir()
    body = os.urandom(5000)
    (served / "README.rst").write_bytes(body)
    server = subprocess.Popen([str(bin_dir / "fastwrap"), "serve", ".", "--port", "0"],
                              cwd=served, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", banner).group(1))
        outputs = []
        for line in curls:
            line = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            outputs.append(subprocess.run(
                line, shell=True, cwd=tmp_path, stdout=subprocess.PIPE, timeout=60,
                check=True).stdout)
        assert (tmp_path / "README.rst").read_bytes() == body        # curl -O
        assert outputs[1] == body[:100]                              # curl -r 0-99
        assert outputs[2].startswith(b"HTTP/1.1 304 Not Modified")  # If-None-Match
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[1]
    assert '"GET /README.rst HTTP/1.1" 200 5000 sendfile' in log, log
    assert '"GET /README.rst HTTP/1.1" 206 100 sendfile' in log, log
    assert "Traceback" not in log, log


def test_sdist_installs_pure_python_without_a_compiler(sdist: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    # No working C compiler: every compile and link fails at once.
    no_compiler = {"CC": "false", "CXX": "false", "LDSHARED": "false"}
    proc = run([str(python), "-m", "pip", "install", "-v", str(sdist)], env=no_compiler)
    assert NOTICE in proc.stdout
    # pip shows that line only with -v: the first import says it to everyone.
    engine, printed = first_import(python)
    assert engine == "python"
    assert printed.startswith(IMPORT_NOTICE) and "\n" not in printed, printed
    assert "FASTWRAP_NO_EXTENSIONS=1" in printed
    assert first_import(python, FASTWRAP_NO_EXTENSIONS="1") == ("python", "")


def test_no_extensions_at_build_time_installs_pure_python(sdist: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    proc = run([str(python), "-m", "pip", "install", "-v", str(sdist)],
               env={"FASTWRAP_NO_EXTENSIONS": "1"})
    assert OPT_OUT in proc.stdout
    assert first_import(python) == ("python", "")  # asked for: nothing to say at import


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
