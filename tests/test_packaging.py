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


@pytest.fixture(scope="module")
def isolated_build(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``python -m build`` as a packager runs it: sdist, then a wheel from it,
    each in a fresh build environment with the newest build requirements."""
    out = tmp_path_factory.mktemp("isolated")
    proc = run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out, proc.stdout


def test_wheel_builds_with_the_extension_and_passes_twine_check(isolated_build: tuple) -> None:
    out, output = isolated_build
    (wheel,) = out.glob("fastwrap-*.whl")
    import zipfile
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(name.startswith("fastwrap/_fastwrap") and name.endswith((".so", ".pyd"))
               for name in names), (names, output[-3000:])
    assert "fastwrap/py.typed" in names and "fastwrap/_fastwrap.pyi" in names
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)])


def test_building_prints_no_deprecation_warning(isolated_build: tuple) -> None:
    """setuptools stops accepting the license table form after 2027-02-18 and
    warns of it and of license classifiers now: the metadata is PEP 639's."""
    _, output = isolated_build
    warned = [line for line in output.splitlines() if re.search("deprecat", line, re.I)]
    assert warned == [], "\n".join(warned)


def test_metadata_names_the_license_by_spdx_and_every_python(isolated_build: tuple) -> None:
    out, _ = isolated_build
    (wheel,) = out.glob("fastwrap-*.whl")
    import zipfile
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
        names = archive.namelist()
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    classifiers = re.findall(r"^Classifier: (.+)$", metadata, re.M)
    assert not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    for minor in range(9, 15):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert any(c.startswith("Programming Language :: Python :: Free Threading ::")
               for c in classifiers)
    from trove_classifiers import classifiers as known  # in the test extra
    assert set(classifiers) <= known, sorted(set(classifiers) - known)


def test_the_generated_c_declares_the_module_free_threading_compatible(tmp_path: Path) -> None:
    """Cython writes the module's Py_mod_gil slot from the directive in
    _fastwrap.pyx: without it, importing the extension on a free-threaded
    build (3.14t) would turn the GIL back on for the whole process."""
    target = tmp_path / "_fastwrap.c"
    run([sys.executable, "-m", "cython", "-3", "-I", str(ROOT / "src" / "fastwrap"),
         str(ROOT / "src" / "fastwrap" / "_fastwrap.pyx"), "-o", str(target)])
    code = target.read_text()
    assert "{Py_mod_gil, __Pyx_FREETHREADING_COMPATIBLE}" in code
    # The value when nothing overrides the directive at compile time:
    default = re.search(r"#else\n#define __Pyx_FREETHREADING_COMPATIBLE (\w+)\n#endif\n"
                        r"#define __PYX_DEFAULT", code)
    assert default is not None and default.group(1) == "Py_MOD_GIL_NOT_USED"
    assert "CYTHON_FREETHREADING_COMPATIBLE" not in (ROOT / "setup.py").read_text()


@pytest.mark.parametrize("platform, expected", [
    ("linux", [f"cp3{minor}-{libc}_{arch}" for minor in (*range(9, 15), "14t")
               for libc in ("manylinux", "musllinux") for arch in ("x86_64", "aarch64")]),
    ("macos", [f"cp3{minor}-macosx_{arch}" for minor in (*range(9, 15), "14t")
               for arch in ("x86_64", "arm64")]),
    ("windows", [f"cp3{minor}-win_amd64" for minor in (*range(9, 15), "14t")]),
])
def test_cibuildwheel_builds_every_platform_and_python(platform: str, expected: list) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("cibuildwheel 3 and later, which know CPython 3.14, run on 3.11+ only")
    pytest.importorskip("cibuildwheel", reason="cibuildwheel is in the project's test extra")
    proc = run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
                "--platform", platform], cwd=ROOT)
    identifiers = set(proc.stdout.split())
    assert set(expected) <= identifiers, sorted(set(expected) - identifiers)
    assert not any("pp" in name or "i686" in name or "win32" in name for name in identifiers)


def test_the_workflow_pins_the_cibuildwheel_the_suite_checks() -> None:
    """The identifier check above asks the cibuildwheel of the test extra;
    the wheels are built by the one the workflow pins: the same release."""
    workflow = (ROOT / ".github" / "workflows" / "wheels.yml").read_text()
    (pinned,) = re.findall(r"pypa/cibuildwheel@v([0-9.]+)", workflow)
    extra = (ROOT / "pyproject.toml").read_text()
    assert f'"cibuildwheel=={pinned}; python_version >= \'3.11\'"' in extra


def test_every_subpackage_is_named_in_the_packages_that_ship() -> None:
    # setuptools ships only the packages listed: one left out installs a
    # `fastwrap` whose import of it fails (fastwrap serve needs fastwrap.server).
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    listed = re.search(r"^packages = \[(.*)\]$", text, re.MULTILINE)
    assert listed is not None
    shipped = set(re.findall(r'"([\w.]+)"', listed.group(1)))
    src = ROOT / "src"
    found = {".".join(init.parent.relative_to(src).parts)
             for init in (src / "fastwrap").rglob("__init__.py")}
    assert found <= shipped, sorted(found - shipped)
