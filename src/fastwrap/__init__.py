"""fastwrap: ``wsgi.file_wrapper`` that sends files the fastest way the kernel allows.

The public API lives here; the engine behind it is the compiled extension,
or its pure-Python twin when the extension is not built or when the
environment variable ``FASTWRAP_NO_EXTENSIONS=1`` asks for it.
"""
import os

from ._paths import PATHS, disable, enable
from ._paths import log as _log
from ._plan import Wait
from ._stats import reset_stats, stats
from ._version import __version__

if os.environ.get("FASTWRAP_NO_EXTENSIONS", "") not in ("", "0"):
    from . import _purepy as _engine
else:
    try:
        from . import _fastwrap as _engine  # type: ignore[no-redef]
    except ImportError:
        from . import _purepy as _engine

        # setup.py leaves this note where the compile failed, and pip shows
        # a successful build's output only with -v: say it here instead.
        _note = os.path.join(os.path.dirname(__file__), "_not_built.txt")
        if os.path.isfile(_note):
            with open(_note, encoding="utf-8") as _f:
                _log.warning("%s", _f.read().strip())

#: ``"cython"`` or ``"python"``: which engine moves the bytes.
IMPLEMENTATION: str = _engine.IMPLEMENTATION

FileWrapper = _engine.FileWrapper
Transmission = _engine.Transmission
transmit = _engine.transmit
select_path = _engine.select_path
available_paths = _engine.available_paths
resident = _engine.resident

__all__ = [
    "FileWrapper",
    "IMPLEMENTATION",
    "PATHS",
    "Transmission",
    "Wait",
    "__version__",
    "available_paths",
    "disable",
    "enable",
    "reset_stats",
    "resident",
    "select_path",
    "stats",
    "transmit",
]
