"""The ``fastwrap`` command: ``info``, ``serve`` and ``bench``."""
from __future__ import annotations

import argparse
import errno
import os
import platform
import signal
import socket
import sys
from typing import Callable, NoReturn, Optional, Sequence

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


def _workers(text: str) -> int:
    """An argparse type: ``--workers``, a whole number from 1 or ``auto`` (one per CPU)."""
    from . import _bench
    from .server import workers
    if text.strip() == "auto":
        return workers.cpu_count()
    try:
        return _bench.whole_number("--workers")(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"--workers must be a whole number from 1, or auto, got {text!r}") from None


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's own (for its usage in errors)."""
    from . import _bench
    parser = argparse.ArgumentParser(prog="fastwrap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastwrap {fastwrap.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser(
        "info", help="print the engine, the platform and the available paths")

    serve = commands.add_parser(
        "serve", help="serve a directory over HTTP, every file through fastwrap",
        description="A static file server (the rules of fastwrap.static.StaticFiles, on "
                    "fastwrap's event-loop HTTP/1.1 server, uvloop when installed). Unlike "
                    "python -m http.server, whose argument is a port, its argument is the "
                    "directory: the port is -p.")
    serve.add_argument("directory", nargs="?", metavar="DIR",
                       help="the directory to serve (default: the current one)")
    serve.add_argument("--directory", "-d", dest="directory_option", metavar="DIR",
                       help="the same, as python -m http.server takes it")
    serve.add_argument("--bind", "-b", default="127.0.0.1", metavar="ADDR",
                       help="address to listen on (default: 127.0.0.1; 0.0.0.0 or :: for all)")
    serve.add_argument("--port", "-p", type=_bench.whole_number("--port", 0, 65535),
                       default=8000, metavar="N",
                       help="port to listen on (default: 8000; 0 picks a free one)")
    serve.add_argument("--threads", "-t", type=_bench.whole_number("--threads"), default=16,
                       metavar="N", help="threads reading the parts of files not in the page "
                                         "cache, so that serving never waits for the disk; "
                                         "connections do not take one (default: 16)")
    serve.add_argument("--workers", "-w", type=_workers, default=1, metavar="N|auto",
                       help="processes serving the port, spread over the cores by the kernel "
                            "(default: 1; auto: one per CPU); a worker that dies is replaced")
    serve.add_argument("--max-connections", type=_bench.whole_number("--max-connections"),
                       default=4096, metavar="N",
                       help="connections served at once; more wait in the listen backlog "
                            "(default: 4096)")
    serve.add_argument("--head-timeout", type=_seconds("--head-timeout"), default=10.0,
                       metavar="S", help="seconds to receive a request head (default: 10)")
    serve.add_argument("--idle-timeout", type=_seconds("--idle-timeout"), default=30.0,
                       metavar="S", help="seconds a keep-alive connection may idle (default: 30)")
    serve.add_argument("--send-timeout", type=_seconds("--send-timeout"), default=60.0,
                       metavar="S", help="seconds a response may make no progress before "
                                         "its connection is closed (default: 60)")
    serve.add_argument("--max-head", type=_bench.whole_number("--max-head", 64), default=65536,
                       metavar="BYTES", help="largest request head: 431 beyond, 414 for a "
                                             "request line alone (default: 65536)")
    serve.add_argument("--grace", type=_seconds("--grace", zero=True), default=10.0, metavar="S",
                       help="on SIGTERM or Ctrl-C, seconds the responses in flight have to "
                            "finish; a second Ctrl-C stops at once (default: 10)")
    serve.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                       help="the event loop (default: uvloop when installed)")
    serve.add_argument("--follow-symlinks", action="store_true",
                       help="serve files whose symbolic links lead out of the directory")
    serve.add_argument("--quiet", "-q", action="store_true", help="no access log")

    bench = commands.add_parser(
        "bench", help="measure fastwrap against the stdlib's ways on this machine",
        description=_bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _bench.add_arguments(bench)
    return parser, {"info": info_parser, "serve": serve, "bench": bench}


def _seconds(option: str, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, more than 0 (or 0 itself if *zero*)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} must be a number of seconds, got {text!r}") from None
        if not (value > 0 or (zero and value == 0)) or value == float("inf"):
            least = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"{option} must be {least} seconds, got {text}")
        return value
    return parse


def _directory_problem(directory: str) -> Optional[str]:
    """Why *directory* cannot be served, in a line that says what to do instead."""
    if os.path.isdir(directory):
        return None
    if not os.path.exists(directory):
        if directory.isdigit():  # python -m http.server 8080: there, the argument is a port
            return (f"no such directory: {directory!r}; to listen on port {directory}, "
                    f"give -p {directory}")
        return f"no such directory: {directory!r}"
    return f"not a directory: {directory!r}"


def _bind_problem(exc: OSError, bind: str, port: int) -> str:
    """Why the server cannot listen on *bind*:*port*, and what to try instead."""
    shown = f"[{bind}]" if ":" in bind else bind
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {shown}:{port}: {reason}; --bind takes an address of this host"
    hint = {errno.EADDRINUSE: "-p 0 picks a free port",
            errno.EACCES: "-p 0 picks a free port (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "--bind takes an address of this host "
                                 "(127.0.0.1; 0.0.0.0 or :: for all)"}.get(exc.errno or 0)
    return f"cannot listen on {shown}:{port}: {reason}" + (f"; {hint}" if hint else "")


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.directory is not None and args.directory_option is not None:
        parser.error("give the directory once: as DIR or as -d/--directory")
    directory = args.directory or args.directory_option or os.curdir
    problem = _directory_problem(directory)
    if problem:
        print(f"fastwrap serve: {problem}", file=sys.stderr)
        return 1
    if args.workers > 1 and not hasattr(os, "fork"):
        parser.error(f"--workers {args.workers} needs fork(), which {sys.platform} lacks: "
                     "give --workers 1")
    from . import static
    try:
        return static.serve(directory, args.bind, args.port, args.threads,
                            follow_symlinks=args.follow_symlinks, quiet=args.quiet,
                            workers=args.workers, max_connections=args.max_connections,
                            head_timeout=args.head_timeout, idle_timeout=args.idle_timeout,
                            send_timeout=args.send_timeout, max_head=args.max_head,
                            grace=args.grace, loop=args.loop)
    except OSError as exc:  # port in use, address not ours (the directory was checked)
        print(f"fastwrap serve: {_bind_problem(exc, args.bind, args.port)}", file=sys.stderr)
        return 1


def _write_out(text: str) -> None:
    """Print *text* to stdout; if its reader has gone (``| head -1``), end as cat does."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _reader_gone()


def _reader_gone() -> NoReturn:
    # Whatever is left would reach no one. A unix tool dies of SIGPIPE here
    # (status 141 in a shell), silently: do the same, after pointing stdout
    # at devnull so that the interpreter's last flush finds nothing to say.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the usage of the command they were given to, not the top level's
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "info":
        _write_out(info())
        return 0
    if args.command == "serve":
        return _serve(args, commands["serve"])
    from . import _bench
    return _bench.run(args, _write_out)


if __name__ == "__main__":
    sys.exit(main())
