"""The ``fastwrap`` command: ``info``, ``serve`` and ``bench``."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Optional, Sequence

import fastwrap
from fastwrap import _paths


def _why_not(path: str) -> str:
    """Why *path* is not available here, in words a user can act on."""
    if _paths.is_disabled(path):
        source = ("FASTWRAP_DISABLE" if path in _paths.named_in_environment()
                  else "fastwrap.disable()")
        return f"disabled by {source}"
    python_engine = fastwrap.IMPLEMENTATION == "python"
    if path == "splice":
        if not sys.platform.startswith("linux"):
            return f"splice(2) is Linux-only (this is {sys.platform})"
        if python_engine:
            return ("the pure-Python engine needs os.splice, new in Python 3.10 "
                    f"(this is {platform.python_version()})")
    if path == "sendfile":
        if sys.platform == "win32":
            return "Windows has no sendfile(2) for sockets (TransmitFile is not used)"
        if python_engine:
            return "os.sendfile is missing from this Python"
    return f"not built into the {fastwrap.IMPLEMENTATION} engine on {sys.platform}"


def _engine_note() -> str:
    if fastwrap.IMPLEMENTATION == "cython":
        return "cython (the compiled extension)"
    if os.environ.get("FASTWRAP_NO_EXTENSIONS", "") not in ("", "0"):
        return "python (FASTWRAP_NO_EXTENSIONS is set)"
    return "python (the compiled extension is not built)"


def info() -> str:
    """The engine, the platform and each path with whether it can be taken, or why not."""
    lines = [
        f"fastwrap {fastwrap.__version__}",
        f"implementation: {_engine_note()}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"platform: {sys.platform} {platform.machine()}",
        f"kernel: {platform.system()} {platform.release()}",
        "paths:",
    ]
    available = fastwrap.available_paths()
    for path in fastwrap.PATHS:
        state = "available" if path in available else "unavailable: " + _why_not(path)
        lines.append(f"  {path:<9} {state}")
    return "\n".join(lines)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def _threads(text: str) -> int:
    threads = int(text)
    if threads < 1:
        raise argparse.ArgumentTypeError(f"--threads must be at least 1, got {threads}")
    return threads


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastwrap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print the engine, the platform and the available paths")

    serve = commands.add_parser(
        "serve", help="serve a directory over HTTP, every file through fastwrap",
        description="A static file server (a WSGI app, fastwrap.static.StaticFiles, "
                    "on fastwrap's threaded HTTP/1.1 server).")
    serve.add_argument("directory", nargs="?", default=os.curdir,
                       help="the directory to serve (default: the current one)")
    serve.add_argument("--bind", "-b", default="127.0.0.1", metavar="ADDR",
                       help="address to listen on (default: 127.0.0.1; 0.0.0.0 or :: for all)")
    serve.add_argument("--port", "-p", type=_port, default=8000,
                       help="port to listen on (default: 8000; 0 picks a free one)")
    serve.add_argument("--threads", "-t", type=_threads, default=16,
                       help="connections served at once (default: 16)")
    serve.add_argument("--follow-symlinks", action="store_true",
                       help="serve files whose symbolic links lead out of the directory")
    serve.add_argument("--quiet", "-q", action="store_true", help="no access log")

    from . import _bench
    bench = commands.add_parser(
        "bench", help="measure fastwrap against the stdlib's ways on this machine",
        description=_bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _bench.add_arguments(bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        print(info())
        return 0
    if args.command == "serve":
        from . import static
        try:
            static.serve(args.directory, args.bind, args.port, args.threads,
                         follow_symlinks=args.follow_symlinks, quiet=args.quiet)
        except OSError as exc:  # no such directory, port in use, address not ours
            print(f"fastwrap serve: {exc}", file=sys.stderr)
            return 1
        return 0
    from . import _bench
    return _bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
