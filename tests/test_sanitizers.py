"""The compiled engine under AddressSanitizer + UndefinedBehaviorSanitizer.

The extension is rebuilt from the source tree beside the tests
(``tests/../src/fastwrap``) with ``-fsanitize=address,undefined`` into a
temporary directory, next to a copy of the package's Python modules; a
representative subset of the core tests (every path, TLS, failures,
non-blocking; not the multi-GiB sparse files) then runs against it in a
subprocess with libasan preloaded.  The run must pass with zero sanitizer
reports, and it must really have imported the sanitizer build.

A deliberately broken C library run under the same harness proves that the
harness reports heap overflows and undefined behaviour at all.

Needs gcc with libasan/libubsan, Cython and setuptools (the project's build
dependencies, also in its ``test`` extra).  Linux only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SOURCE = TESTS.parent / "src" / "fastwrap"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="the sanitizer build is checked on Linux (gcc, libasan)"),
    pytest.mark.skipif(not (SOURCE / "_fastwrap.pyx").is_file(),
                       reason=f"no source tree beside the tests ({SOURCE} has no _fastwrap.pyx): "
                              "the sanitizer build needs a checkout or an sdist"),
]

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
# Core tests that exercise every path of every kind, TLS, peers that fail
# and non-blocking transmissions: the code the sanitizers should watch.
CORE_TESTS = ["test_paths.py", "test_tls.py", "test_failures.py", "test_nonblocking.py",
              "test_lengths.py", "test_positions.py", "test_headers.py",
              "test_filewrapper.py"]
# Left out: the multi-GiB sparse files (slow: -m "not slow"), and the
# pure-Python engine (nothing for a C sanitizer to see).
SELECTION = ["-m", "not slow", "-k", "c-extension-module"]
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
           "AddressSanitizer:DEADLYSIGNAL")
BUILD_TIMEOUT = 300
RUN_TIMEOUT = 600


def _gcc_library(name: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: no sanitizer build")
    out = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(out)
    if not path.is_absolute() or not path.exists():
        pytest.skip(f"gcc has no {name} (install libasan for this gcc)")
    return path.resolve()


@pytest.fixture(scope="module")
def libasan() -> Path:
    _gcc_library("libubsan.so")
    return _gcc_library("libasan.so")


def sanitizer_env(libasan: Path, pythonpath: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE", "PYTHONPATH",
                        "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    env["LD_PRELOAD"] = str(libasan)
    # CPython itself is not leak-clean: leak checking would only report it.
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    # Every Python object on the C heap, so ASan sees overruns of bytes/buffers too.
    env["PYTHONMALLOC"] = "malloc"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def reports_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(r in line for r in REPORTS)]


@pytest.fixture(scope="module")
def sanitized_package(tmp_path_factory, libasan) -> Path:
    """A directory holding a copy of fastwrap whose _fastwrap is the sanitizer build."""
    pytest.importorskip("Cython", reason="Cython (a build dependency) is needed to rebuild")
    pytest.importorskip("setuptools", reason="setuptools is needed to rebuild")
    root = tmp_path_factory.mktemp("asan")
    package = root / "site" / "fastwrap"
    package.mkdir(parents=True)
    for item in SOURCE.iterdir():
        if item.is_file() and item.suffix in (".py", ".pyx", ".pxd", ".h", ".pyi", ".typed"):
            shutil.copy2(item, package / item.name)
    build = root / "build"
    script = textwrap.dedent(f"""
        import sys
        from Cython.Build import cythonize
        from setuptools import Extension, setup
        ext = Extension(
            "fastwrap._fastwrap", [{str(package / '_fastwrap.pyx')!r}],
            include_dirs=[{str(package)!r}],
            define_macros=[("_FILE_OFFSET_BITS", "64"), ("_GNU_SOURCE", "1")],
            extra_compile_args={SANITIZE + ['-O1', '-g']!r},
            extra_link_args={SANITIZE!r},
        )
        setup(name="fastwrap-asan", script_args=[
                  "build_ext", "--build-lib", {str(root / 'site')!r},
                  "--build-temp", {str(build)!r}, "--force"],
              ext_modules=cythonize([ext], build_dir={str(build / 'c')!r},
                                    compiler_directives={{"language_level": "3"}}, quiet=True))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, f"sanitizer build failed:\n{done.stdout}\n{done.stderr}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = package / f"_fastwrap{suffix}"
    assert built.is_file(), f"the sanitizer build left no {built.name}: {done.stdout}"
    # Instrumented code calls the sanitizer runtimes: their symbols are in the module.
    image = built.read_bytes()
    assert b"__asan_report_" in image, "the rebuilt module is not ASan-instrumented"
    assert b"__ubsan_handle_" in image, "the rebuilt module is not UBSan-instrumented"
    shutil.rmtree(build, ignore_errors=True)
    return root / "site"


PROBE_PLUGIN = '''
"""Loaded with -p: records which fastwrap the sanitized run imported, and its outcome."""
import json, os

import fastwrap
import fastwrap._fastwrap

OUT = os.environ["FASTWRAP_ASAN_PROBE"]
counts = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_sessionstart(session):
    with open(OUT, "w") as f:
        json.dump({"module": fastwrap._fastwrap.__file__, "package": fastwrap.__file__,
                   "implementation": fastwrap.IMPLEMENTATION}, f)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_sessionfinish(session, exitstatus):
    with open(OUT) as f:
        data = json.load(f)
    data.update(counts, exitstatus=int(exitstatus))
    with open(OUT, "w") as f:
        json.dump(data, f)
'''


def test_core_tests_pass_under_asan_and_ubsan_with_no_report(sanitized_package, libasan,
                                                            tmp_path):
    (sanitized_package / "_fastwrap_asan_probe.py").write_text(PROBE_PLUGIN)
    probe = tmp_path / "probe.json"
    env = sanitizer_env(libasan, sanitized_package)
    env["FASTWRAP_ASAN_PROBE"] = str(probe)
    command = [sys.executable, "-m", "pytest", "-p", "_fastwrap_asan_probe",
               "-p", "no:cacheprovider", "-q", "-x", *SELECTION, *(str(TESTS / name) for name in CORE_TESTS)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    tail = "\n".join((done.stdout + "\n" + done.stderr).splitlines()[-60:])
    found = reports_in(done.stdout + done.stderr)
    assert not found, f"sanitizer reports:\n" + "\n".join(found) + f"\n---\n{tail}"
    assert done.returncode == 0, f"the sanitized run failed (rc {done.returncode}):\n{tail}"
    facts = json.loads(probe.read_text())
    module = Path(facts["module"]).resolve()
    assert module.parent == (sanitized_package / "fastwrap").resolve(), (
        f"the run imported {module}, not the sanitizer build")
    assert facts["implementation"] == "cython"
    assert facts["exitstatus"] == 0
    assert facts["failed"] == 0
    assert facts["passed"] >= 150, f"too few tests ran under the sanitizers: {facts}"
    print(f"\nsanitized run: {facts['passed']} passed, {facts['skipped']} skipped, "
          f"module {module}")


BROKEN_C = r'''
#include <limits.h>
#include <stdlib.h>
#include <string.h>

int heap_overflow(int n)
{
    char *p = malloc(16);
    memset(p, 0, 16);
    p[16 + n] = 1;          /* one past the end when n == 0 */
    int r = p[0];
    free(p);
    return r;
}

int signed_overflow(int n)
{
    int x = INT_MAX - 1;
    return x + n;           /* undefined for n >= 2 */
}
'''


@pytest.fixture(scope="module")
def broken_library(tmp_path_factory, libasan) -> Path:
    root = tmp_path_factory.mktemp("broken")
    source = root / "broken.c"
    source.write_text(BROKEN_C)
    library = root / "libbroken.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-g", *SANITIZE, "-o", str(library),
                    str(source)], check=True, capture_output=True, timeout=60)
    return library


@pytest.mark.parametrize("call, report", [
    ("heap_overflow(0)", "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ("signed_overflow(5)", "runtime error: signed integer overflow"),
])
def test_the_harness_reports_a_deliberate_bug(broken_library, libasan, call, report):
    code = (f"import ctypes; lib = ctypes.CDLL({str(broken_library)!r}); "
            f"print(lib.{call}); print('survived')")
    done = subprocess.run([sys.executable, "-c", code], env=sanitizer_env(libasan),
                          capture_output=True, text=True, timeout=60)
    assert report in done.stderr, done.stderr[-3000:]
    assert reports_in(done.stderr)
    assert done.returncode != 0
    assert "survived" not in done.stdout


def test_the_harness_is_quiet_for_a_correct_call(broken_library, libasan):
    code = (f"import ctypes; lib = ctypes.CDLL({str(broken_library)!r}); "
            f"assert lib.signed_overflow(1) == 2**31 - 1; print('survived')")
    done = subprocess.run([sys.executable, "-c", code], env=sanitizer_env(libasan),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not reports_in(done.stderr)
    assert "survived" in done.stdout
