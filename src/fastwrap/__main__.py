"""``python -m fastwrap info``: which engine is in use and which paths it can take."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Optional, Sequence

import fastwrap
from fastwrap import _paths


def _why_not(path: str) -> str:
    if _paths.is_disabled(path):
        return "disabled (FASTWRAP_DISABLE or fastwrap.disable())"
    return f"not available in the {fastwrap.IMPLEMENTATION} engine on {sys.platform}"


def info() -> str:
    lines = [
        f"fastwrap {fastwrap.__version__}",
        f"implementation: {fastwrap.IMPLEMENTATION}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"platform: {platform.system()} {platform.release()} {platform.machine()}",
        "paths:",
    ]
    available = fastwrap.available_paths()
    for path in fastwrap.PATHS:
        state = "available" if path in available else _why_not(path)
        lines.append(f"  {path:<9} {state}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastwrap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print the engine and the available paths")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
