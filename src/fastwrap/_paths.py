"""The five ways bytes can leave, and which of them the operator switched off.

Both engines consult this one registry, so ``fastwrap.disable("sendfile")``
takes effect for whichever engine is in use.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("fastwrap")

SENDFILE = "sendfile"
SPLICE = "splice"
MMAP = "mmap"
READINTO = "readinto"
READ = "read"

#: Every path, fastest first.
PATHS = (SENDFILE, SPLICE, MMAP, READINTO, READ)

# The PEP 3333 read() loop is what every other path falls back to; with it
# gone some sources could not be sent at all.
_ALWAYS_ON = frozenset({READ})

_disabled: set[str] = set()


def _check(paths: tuple[str, ...]) -> None:
    for path in paths:
        if path not in PATHS:
            raise ValueError(
                f"unknown path {path!r}: choose from {', '.join(PATHS)}")
        if path in _ALWAYS_ON:
            raise ValueError(
                f"the {path!r} path is the fallback for every source and "
                "cannot be disabled")


def disable(*paths: str) -> None:
    """Stop using *paths* (e.g. ``"sendfile"`` on a filesystem that garbles it)."""
    _check(paths)
    _disabled.update(paths)


def enable(*paths: str) -> None:
    """Use *paths* again after :func:`disable` or ``FASTWRAP_DISABLE``."""
    _check(paths)
    _disabled.difference_update(paths)


def is_disabled(path: str) -> bool:
    return path in _disabled


def disabled() -> frozenset[str]:
    return frozenset(_disabled)


def named_in_environment() -> tuple[str, ...]:
    """The paths ``FASTWRAP_DISABLE`` names (comma-separated, any case)."""
    spec = os.environ.get("FASTWRAP_DISABLE", "")
    return tuple(p.strip().lower() for p in spec.split(",") if p.strip())


def _starting_the_command() -> bool:
    """Whether this import starts a command (``fastwrap ...``, ``python -m fastwrap ...``).

    The ``fastwrap`` script names itself in ``sys.argv[0]``; ``python -m``
    leaves ``"-m"`` there while the interpreter imports the packages of the
    module it is to run.  An error of this import would then reach no
    program, only the interpreter, which prints it with a traceback.
    """
    first = sys.argv[0] if sys.argv else ""
    if first == "-m":
        # Which module -m runs: sys.orig_argv says (3.10+); 3.9 cannot tell.
        argv = getattr(sys, "orig_argv", None)
        return argv is None or "fastwrap" in argv or "-mfastwrap" in argv
    return os.path.basename(first) in ("fastwrap", "fastwrap.exe", "fastwrap-script.py")


def _from_environment() -> None:
    spec = os.environ.get("FASTWRAP_DISABLE", "")
    try:
        disable(*named_in_environment())
    except ValueError as exc:
        message = f"FASTWRAP_DISABLE={spec!r}: {exc}"
        if _starting_the_command():
            # A user at a prompt mistyped a variable: one line, not a traceback.
            print(f"fastwrap: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        raise ValueError(message) from None


_from_environment()
