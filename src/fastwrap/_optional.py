"""One clear line when an integration's optional dependency is not installed.

fastwrap's integrations import the server they plug into (gunicorn, gevent,
uvicorn, httptools), which ``pip install fastwrap`` does not bring.  Without
it, the user should read what to install, not fifty lines of the server's
startup above a bare ``ModuleNotFoundError``.
"""
from __future__ import annotations

import sys
from typing import Any


class MissingDependency(ModuleNotFoundError):
    """Something an integration needs is not installed; its message says what to do."""


def missing(what: str, module: str, install: str) -> MissingDependency:
    """The error for *what* without *module*: uncaught, its one line is all that is printed.

    Servers resolve their worker or protocol classes deep in their own
    startup (uvicorn's ``--http``, gunicorn's ``-k``), where the traceback
    would bury the one line that matters; an interpreter that ends on this
    error prints that line alone.  Code that catches it gets an ordinary
    ModuleNotFoundError.
    """
    previous = sys.excepthook
    if not getattr(previous, "fastwrap_missing", False):
        def excepthook(kind: Any, value: Any, traceback: Any) -> None:
            if isinstance(value, MissingDependency):
                print(value, file=sys.stderr)
            else:
                previous(kind, value, traceback)

        excepthook.fastwrap_missing = True  # type: ignore[attr-defined]
        sys.excepthook = excepthook
    return MissingDependency(f"{what} needs {module}, which is not installed: {install}",
                             name=module)


def reraise(exc: ModuleNotFoundError, what: str, module: str, install: str) -> BaseException:
    """What to raise for *exc* from importing *module*: the one-line error if *module*
    itself is missing, else *exc* (something the module needs is missing)."""
    return missing(what, module, install) if exc.name == module else exc
