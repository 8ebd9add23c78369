"""Peer conformance: CPython's own test_wsgiref with install() active, and validator'd apps.

1. ``test.test_wsgiref`` (the stdlib's suite for wsgiref) runs unchanged in a
   fresh interpreter after ``fastwrap.wsgiref.install()``, on every CPython
   3.9-3.13 found (pyenv's, or those named in ``FASTWRAP_TEST_PYTHONS``), and
   must pass; afterwards the same interpreter checks that install() was still
   in place and really sends a file response through fastwrap.
2. Applications inside ``wsgiref.validate.validator`` (a plain file app, Flask,
   Django) pass through every launcher: the validator turns anything it
   objects to into a 500, so a byte-exact 200/206/304 is a clean bill.
"""
from __future__ import annotations

import glob
import http.client
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import e2e_apps
from _support import HANG, SRC, random_bytes
from e2e_launchers import LAUNCHERS, serving_root

VERSIONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

RUNNER = r"""
import json, os, socket, sys, threading, unittest
import fastwrap, fastwrap.wsgiref
from fastwrap import serving as _serving
fastwrap.wsgiref.install()

consulted = [0]
_of = _serving.FileResponse.of.__func__
def _counting_of(cls, result):
    consulted[0] += 1
    return _of(cls, result)
_serving.FileResponse.of = classmethod(_counting_of)

try:
    import test.test_wsgiref as suite
except ImportError as exc:
    print("NO-TEST-PACKAGE " + repr(exc))
    sys.exit(3)

program = unittest.main(module=suite, argv=["test_wsgiref", "-v"], exit=False)
result = program.result

# Still installed, and still doing its work: a binary file through a stock
# SimpleHandler on a socket goes through fastwrap.
from wsgiref.handlers import SimpleHandler
from wsgiref.util import FileWrapper, setup_testing_defaults
path = sys.argv[1]
data = open(path, "rb").read()
a, b = socket.socketpair()
got = bytearray()
reader = threading.Thread(target=lambda: [got.extend(c) for c in iter(lambda: b.recv(65536), b"")])
reader.start()
environ = {}
setup_testing_defaults(environ)
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(path, "rb"))
before = sum(e["bytes"] for e in fastwrap.stats().values())
out = a.makefile("wb", buffering=0)
SimpleHandler(open(os.devnull, "rb"), out, sys.stderr, environ).run(app)
out.close(); a.close(); reader.join(60); b.close()
sent = sum(e["bytes"] for e in fastwrap.stats().values()) - before

print("RESULT " + json.dumps({
    "tests_run": result.testsRun,
    "failures": len(result.failures),
    "errors": len(result.errors),
    "skipped": len(result.skipped),
    "unexpected_successes": len(result.unexpectedSuccesses),
    "successful": result.wasSuccessful(),
    "still_installed": fastwrap.wsgiref.is_installed(),
    "hook_consulted": consulted[0],
    "implementation": fastwrap.IMPLEMENTATION,
    "version": sys.version.split()[0],
    "file_body_exact": bytes(got).partition(b"\r\n\r\n")[2] == data,
    "file_sent_by_fastwrap": sent,
    "file_size": len(data),
}))
"""


def _interpreters() -> Dict[str, Optional[str]]:
    """CPython version -> interpreter path (None: not found on this machine)."""
    named = [p for p in os.environ.get("FASTWRAP_TEST_PYTHONS", "").split(os.pathsep) if p]
    found: Dict[str, Optional[str]] = {v: None for v in VERSIONS}
    for path in named:
        version = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=HANG).stdout.strip()
        found[version] = path
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in VERSIONS:
        if found[version] is None:
            candidates = sorted(glob.glob(str(pyenv / f"{version}.*" / "bin" / "python3")),
                                key=lambda p: [int(x) for x in
                                               Path(p).parents[1].name.split(".")
                                               if x.isdigit()])
            if candidates:
                found[version] = candidates[-1]
    current = "%d.%d" % sys.version_info[:2]
    if current in found and found[current] is None:
        found[current] = sys.executable
    return found


INTERPRETERS = _interpreters()


@pytest.fixture
def binary_file(tmp_path: Path) -> Path:
    path = tmp_path / "conformance.bin"
    path.write_bytes(random_bytes(300_001, seed=50))
    return path


@pytest.mark.parametrize("engine_env", [{}, {"FASTWRAP_NO_EXTENSIONS": "1"}],
                         ids=["default-engine", "pure-python-engine"])
@pytest.mark.parametrize("version", VERSIONS)
def test_cpython_test_wsgiref_passes_with_install_active(version: str, engine_env: dict,
                                                         binary_file: Path) -> None:
    python = INTERPRETERS.get(version)
    if python is None:
        pytest.skip(f"no CPython {version} on this machine (pyenv's, or name it in "
                    "FASTWRAP_TEST_PYTHONS)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(SRC)
    env.update(engine_env)
    done = subprocess.run([python, "-c", RUNNER, str(binary_file)], capture_output=True,
                          text=True, env=env, timeout=5 * HANG, cwd=str(binary_file.parent))
    output = done.stdout + done.stderr
    assert "NO-TEST-PACKAGE" not in done.stdout, (
        f"{python} (CPython {version}) has no importable test.test_wsgiref, so its own "
        f"wsgiref suite cannot be run: install that interpreter's test package "
        f"(e.g. Debian's libpython{version}-testsuite, or a full pyenv build).\n{output}")
    assert done.returncode == 0, output[-6000:]
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    assert result["version"].startswith(version + ".")
    assert result["successful"], output[-6000:]
    assert result["tests_run"] >= 30, result  # the suite really ran
    assert result["failures"] == result["errors"] == 0, result
    assert result["still_installed"], result
    assert result["hook_consulted"] > 0, "the suite's handlers never reached fastwrap's hook"
    assert result["file_body_exact"], result
    assert result["file_sent_by_fastwrap"] == result["file_size"], result
    if engine_env:
        assert result["implementation"] == "python"


# -- validator'd applications through every launcher ----------------------------------------

SIZE = 1_500_003


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    directory = tmp_path_factory.mktemp("conformance-root")
    data = random_bytes(SIZE, seed=51)
    (directory / "v.bin").write_bytes(data)
    with serving_root(directory):
        yield data


def _request(url: str, method: str, path: str,
             headers: Optional[Dict[str, str]] = None) -> http.client.HTTPResponse:
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HANG)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


VALIDATED = {
    "plain": "e2e_apps:validated",
    "flask": "e2e_apps:validated_flask",
    "django": "e2e_apps:validated_django",
}


@pytest.mark.parametrize("app", sorted(VALIDATED))
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_validator_wrapped_apps_pass_through_every_launcher(served: bytes, launcher: str,
                                                            app: str) -> None:
    path = e2e_apps.PREFIX + "v.bin"
    with LAUNCHERS[launcher](VALIDATED[app]) as url:
        url = str(url)
        replies: List[http.client.HTTPResponse] = []
        get = _request(url, "GET", path)
        replies.append(get)
        assert get.status == 200, get.body[:500]
        assert get.getheader("Content-Length") == str(SIZE)
        assert get.body == served
        head = _request(url, "HEAD", path)
        assert head.status == 200, head.body[:500]
        assert head.getheader("Content-Length") == str(SIZE)
        if app == "plain":
            nocl = _request(url, "GET", path + "?nocl=1&offset=99")
            assert nocl.status == 200, nocl.body[:500]
            assert nocl.body == served[99:]
        if app == "flask":
            ranged = _request(url, "GET", path, {"Range": "bytes=1000-1099999"})
            assert ranged.status == 206, ranged.body[:500]
            assert ranged.getheader("Content-Range") == f"bytes 1000-1099999/{SIZE}"
            assert ranged.body == served[1000:1100000]
            etag = get.getheader("ETag")
            unchanged = _request(url, "GET", path, {"If-None-Match": etag})
            assert unchanged.status == 304, unchanged.body[:500]
            assert unchanged.body == b""
