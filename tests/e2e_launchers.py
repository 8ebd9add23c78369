"""Every server the end-to-end tests run, by name: ``LAUNCHERS[name](app_ref) -> URL``.

The stdlib ones come from ``_servers``; gunicorn's, gevent's and waitress's live in modules
of their own, imported here defensively: one missing or broken launcher module
leaves the others running, and is reported in ``UNAVAILABLE`` (which
test_e2e_frameworks turns into one failing test per launcher, not a skip).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

from _servers import LAUNCHERS as _BUILTIN
from e2e_apps import ROOT_ENV

LAUNCHERS: Dict[str, Callable[[str], Any]] = dict(_BUILTIN)

#: (launcher name, module in tests/, function, keyword arguments)
_EXTERNAL = [
    ("gunicorn-sync", "_serve_gunicorn", "serve_gunicorn", {"worker": "sync"}),
    ("gunicorn-gthread", "_serve_gunicorn", "serve_gunicorn", {"worker": "gthread"}),
    ("gevent", "_serve_gevent", "serve_gevent", {}),
    ("waitress", "_serve_waitress", "serve_waitress", {"kind": "fastwrap"}),
]

#: Every launcher the suite must have.
EXPECTED = [*_BUILTIN, *(name for name, *_ in _EXTERNAL)]

#: Launcher name -> why it could not be loaded.
UNAVAILABLE: Dict[str, str] = {}
#: Launcher name -> why this machine cannot run it, as documented (a visible skip).
UNSUPPORTED: Dict[str, str] = {}


def _gthread_unsupported() -> str:
    try:
        import fastwrap.gunicorn as integration
    except Exception:
        return ""  # the launcher's own import reports it
    if integration._VERSION < integration.GTHREAD_MINIMUM:
        return (f"fastwrap.gunicorn.ThreadWorker needs gunicorn >= "
                f"{'.'.join(map(str, integration.GTHREAD_MINIMUM))} (README), this machine "
                f"has {integration.gunicorn.__version__} (the newest for this Python?)")
    return ""


if _gthread_unsupported():
    UNSUPPORTED["gunicorn-gthread"] = _gthread_unsupported()

for _name, _module, _function, _kwargs in _EXTERNAL:
    if _name in UNSUPPORTED:
        continue
    try:
        _launch = getattr(importlib.import_module(_module), _function)
    except Exception as exc:  # a missing or broken launcher must not hide the others
        UNAVAILABLE[_name] = f"tests/{_module}.py ({_function}) is not usable: {exc!r}"
    else:
        LAUNCHERS[_name] = functools.partial(_launch, **_kwargs)

#: Servers that must keep an HTTP/1.1 connection open after a file response.
#: (The stock wsgiref server speaks HTTP/1.0, one request per connection, and
#: gunicorn's sync worker closes after every response: both by design.)
KEEP_ALIVE = {"make_server", "gunicorn-gthread", "gevent", "waitress"}


@contextlib.contextmanager
def serving_root(directory: Path) -> Iterator[Path]:
    """Name *directory* in FASTWRAP_E2E_ROOT (servers started meanwhile serve it, child
    processes included); at exit, put the variable back and remove the directory."""
    before = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = str(directory)
    try:
        yield directory
    finally:
        if before is None:
            os.environ.pop(ROOT_ENV, None)
        else:
            os.environ[ROOT_ENV] = before
        shutil.rmtree(directory, ignore_errors=True)
