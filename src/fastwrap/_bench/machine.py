"""The machine the bench runs on, and the engines it can measure there."""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
from typing import Any, Optional

import fastwrap
from fastwrap import _paths


# -- the machine and its engines ------------------------------------------------------

def engines() -> list[tuple[str, Any, Optional[str]]]:
    """(name, module, why it cannot be measured) for the compiled and the pure engine."""
    found: list[tuple[str, Any, Optional[str]]] = []
    try:
        compiled: Any = importlib.import_module("fastwrap._fastwrap")
        found.append(("cython", compiled, None))
    except ImportError as exc:
        built = not (isinstance(exc, ModuleNotFoundError) and exc.name == "fastwrap._fastwrap")
        found.append(("cython", None, f"the compiled engine does not import: {exc}" if built
                      else "the compiled engine is not built"))
    found.append(("python", importlib.import_module("fastwrap._purepy"), None))
    return found


def why_unavailable(engine: Any, path: str) -> Optional[str]:
    if _paths.is_disabled(path):
        return "switched off (FASTWRAP_DISABLE)"
    if path in engine.SUPPORTED_PATHS:
        return None
    if path == "splice" and not sys.platform.startswith("linux"):
        return f"splice(2) is Linux-only (this is {sys.platform})"
    if path == "splice" and not hasattr(os, "splice"):
        return f"os.splice needs Python 3.10 (this is {platform.python_version()})"
    return f"not available in the {engine.IMPLEMENTATION} engine here"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "fastwrap_version": fastwrap.__version__,
        "implementation": fastwrap.IMPLEMENTATION,
        "disabled_paths": sorted(_paths.disabled()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
