"""One suite, two engines: every test that takes ``engine`` runs against both.

As in aio-libs/propcache: a session fixture parametrised over the compiled
module (id ``c-extension-module``, marker ``c_extension``) and its pure-Python
twin (id ``pure-python-module``); ``--no-c-extensions`` leaves the compiled
one out.  A compiled engine that is not built skips its half of the suite
with the reason "compiled engine not built"; on Linux, where it must exist,
test_implementation.py::test_compiled_engine_is_built fails instead.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys

import pytest

import fastwrap
from fastwrap import _paths

from _support import LINUX, Link, Sources, make_link

C_ENGINE = "fastwrap._fastwrap"
PY_ENGINE = "fastwrap._purepy"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-c-extensions", action="store_true", default=False,
                     help="do not test the compiled engine (fastwrap._fastwrap)")


def import_compiled_engine():
    """The compiled engine, or None when it is not built.

    A built module that fails to import (undefined symbol, ABI mismatch)
    is an error, not "not built": that ImportError propagates.
    """
    try:
        return importlib.import_module(C_ENGINE)
    except ModuleNotFoundError as exc:
        if exc.name != C_ENGINE:
            raise
        return None


@pytest.fixture(scope="session", params=[
    pytest.param(C_ENGINE, id="c-extension-module", marks=pytest.mark.c_extension),
    pytest.param(PY_ENGINE, id="pure-python-module"),
])
def engine(request: pytest.FixtureRequest):
    """The engine module under test: fastwrap._fastwrap or fastwrap._purepy."""
    if request.param == C_ENGINE:
        if request.config.getoption("--no-c-extensions"):
            pytest.skip("compiled engine left out by --no-c-extensions")
        module = import_compiled_engine()
        if module is None:
            where = "" if LINUX else f" (optional on {sys.platform})"
            pytest.skip(f"compiled engine not built{where}: "
                        "run `python setup.py build_ext --inplace`")
        return module
    return importlib.import_module(PY_ENGINE)


@pytest.fixture(autouse=True)
def _restore_disabled_paths():
    """fastwrap.disable() is process-wide: put it back after every test."""
    before = _paths.disabled()
    yield
    switchable = [p for p in fastwrap.PATHS if p != "read"]
    fastwrap.enable(*switchable)
    if before:
        fastwrap.disable(*before)


@pytest.fixture(autouse=True)
def _empty_tmp_path(request):
    """Leave no test file behind (sparse gigabyte files included)."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None and tmp.exists():
        for child in tmp.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


@pytest.fixture
def sources(tmp_path):
    made = Sources(tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["socketpair", "tcp"])
def link(request):
    """A connected pair: a blocking socketpair, or TCP on 127.0.0.1 whose dest
    socket has a timeout (so its descriptor is non-blocking and the engine
    waits with poll)."""
    made = make_link(request.param)
    if request.param == "tcp":
        made.dest.settimeout(60)
    yield made
    made.close()


@pytest.fixture
def socketpair_link():
    made = make_link("socketpair")
    yield made
    made.close()


@pytest.fixture
def tcp_link():
    made = make_link("tcp")
    yield made
    made.close()


@pytest.fixture(scope="session")
def tls_contexts():
    import ssl

    import trustme  # in the project's test extra: pip install -e .[test]
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.fixture
def tls_link(tls_contexts) -> Link:
    """TLS on 127.0.0.1: dest is the server-side ssl.SSLSocket."""
    made = make_link("tls", tls_contexts)
    yield made
    made.close()


def pytest_report_header(config):
    compiled = import_compiled_engine()
    state = f"built ({compiled.__file__})" if compiled else "not built"
    return [f"fastwrap {fastwrap.__version__}: package engine {fastwrap.IMPLEMENTATION}, "
            f"compiled engine {state}, "
            f"FASTWRAP_NO_EXTENSIONS={os.environ.get('FASTWRAP_NO_EXTENSIONS', '')!r}"]
