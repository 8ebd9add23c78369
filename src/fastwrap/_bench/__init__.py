"""Measure fastwrap against the standard library's ways of sending files, on this machine.

One run of interleaved rounds: every round visits every table, and each table
every contender in turn (the order rotating from round to round), so that a
slow moment of the machine falls on all of them alike.  Tables:

  a) throughput (GB/s) and the sender's CPU seconds per GB of each fastwrap
     path -- sendfile, splice from a pipe, mmap, readinto, read -- in both
     engines, against wsgiref.util.FileWrapper iterated into sendall(),
     socket.sendfile() and shutil.copyfileobj() into sock.makefile("wb") (as
     http.server does), for 4 KiB, 1 MiB and a large file from the page
     cache, on loopback TCP and on a socketpair;
  b) HTTP requests per second of `fastwrap serve` against
     `python -m http.server` and the stock wsgiref.simple_server running
     fastwrap.static.StaticFiles, for 4 KiB and 1 MiB files;
  c) the cost of one 4 KiB transmission, raw and as overhead over a bare
     os.sendfile() of the same bytes in the same round (the kernel's share);
  d) a pipe source and a TLS destination against the read loop
     (`while chunk := f.read(65536): sock.sendall(chunk)`).

A helper process drains every connection, so the CPU counted is the sender's
own; HTTP servers and clients run in processes of their own.  Each figure is
the median over the rounds with its [min..max]; a ratio xN is fastwrap's median
over the baseline's, turned so that N > 1 means fastwrap does better (faster,
or less CPU).  Needs only the standard library; the TLS row needs the openssl
command, --plot needs matplotlib.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from types import FrameType
from typing import Any, BinaryIO, Callable, Iterator, Optional

from .children import Children, Helper
from .files import make_certificate, warm, write_file
from .links import Links
from .machine import engines, machine
from .model import (
    EXIT_INTERRUPTED, EXIT_USAGE, MEDIUM, MIB, SECTIONS, SMALL, BenchError, Settings, Table,
)
from .plot import matplotlib_problem, plot
from .report import findings, render, report
from .rounds import Progress, run_rounds
from .servers import start_servers, wait_until_listening
from .tables import Bench, _size_label, build_tables

__all__ = ["SECTIONS", "add_arguments", "run", "whole_number"]


# -- arguments ------------------------------------------------------------------

def whole_number(option: str, low: int = 1, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an int from *low* (to *high*), or an error naming *option*."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} must be a whole number, got {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{option} must be {low}-{high}, got {value}")
        if value < low:
            raise argparse.ArgumentTypeError(f"{option} must be at least {low}, got {value}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastwrap bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds: small sizes, 2 rounds")
    parser.add_argument("--rounds", type=whole_number("--rounds"), default=None, metavar="N",
                        help="interleaved rounds (default: 5; 2 with --quick)")
    parser.add_argument("--size-mib", type=whole_number("--size-mib"), default=None,
                        metavar="N", help="size of the large file in MiB "
                                          "(default: 256; 2 with --quick)")
    parser.add_argument("--json", metavar="FILE",
                        help="write every round's figures and the machine's description here")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw a bar chart of the medians (needs matplotlib)")


# -- the run --------------------------------------------------------------------------------------

def check_output(path: Optional[str], option: str) -> Optional[str]:
    """Why *path* cannot be written, found before the run rather than after it."""
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{option}: no directory {directory}"
    if not os.access(directory, os.W_OK):
        return f"{option}: cannot write into {directory}"
    return None


def problems_before_start(args: argparse.Namespace) -> Optional[tuple[int, str]]:
    """(exit status, message) when the run cannot even start."""
    for path, option in ((args.json, "--json"), (args.plot, "--plot")):
        problem = check_output(path, option)
        if problem:
            return EXIT_USAGE, problem
    if args.plot:
        problem = matplotlib_problem()
        if problem:
            return EXIT_USAGE, problem
    if not hasattr(socket, "send_fds") or not hasattr(socket, "AF_UNIX"):
        return 1, "needs a POSIX system with socket.send_fds (Python 3.9+)"
    return None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A terminated bench cleans up as an interrupted one does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def close_mapping(memory: mmap.mmap) -> None:
    """Unmap, unless an interrupted transmission still holds a view of it (exit unmaps)."""
    with contextlib.suppress(BufferError):
        memory.close()


def prepare(stack: contextlib.ExitStack, settings: Settings, progress: Progress) -> Bench:
    """Files, helper processes, servers: everything, each registered for cleanup."""
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastwrap-bench-"))
    root = os.path.join(workdir, "www")
    os.mkdir(root)
    need = settings.large + MEDIUM + SMALL
    free = shutil.disk_usage(workdir).free
    if free < need + 64 * MIB:
        raise BenchError(f"{free // MIB} MiB free in {tempfile.gettempdir()}, the files need "
                         f"{need // MIB + 64} MiB: try a smaller --size-mib, or set TMPDIR")
    children = Children(workdir)
    stack.callback(children.stop)
    progress.note("starting the servers and helpers")
    servers = start_servers(children, root)
    drain = Helper(children, "drain", "drain")
    feeder = Helper(children, "feed", "feed")
    clients = [Helper(children, "client", f"client-{n}") for n in range(settings.clients)]
    for helper in [drain, feeder, *clients]:
        stack.callback(helper.close)
    progress.note(f"writing the files ({_size_label(settings.large)} the largest)")
    files = {}
    names = {SMALL: "small.bin", MEDIUM: "medium.bin", settings.large: "large.bin"}
    for size, name in names.items():
        files[size] = os.path.join(root, name)
        write_file(files[size], size)
        warm(files[size])
    opened: dict[int, BinaryIO] = {
        size: stack.enter_context(open(path, "rb")) for size, path in files.items()}
    mapped = {size: mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
              for size, f in opened.items()}
    for memory in mapped.values():
        stack.callback(close_mapping, memory)
    tls, tls_skip = make_certificate(workdir)
    links = Links(drain, tls)
    stack.callback(links.close)
    errors = {}
    for server in servers:
        try:
            wait_until_listening(server)
        except BenchError as exc:
            errors[server.name] = str(exc)
    return Bench(settings, files, opened, mapped, links, feeder, clients, servers,
                 errors, tls_skip, engines())


def measure_all(settings: Settings, progress: Progress) -> tuple[list[Table], dict[str, Any]]:
    """Prepare, run the rounds, clean up; the tables and what --json writes."""
    described = machine()  # dated when the run starts
    with contextlib.ExitStack() as stack:
        bench = prepare(stack, settings, progress)
        tables = build_tables(bench)
        run_rounds(tables, settings.rounds, progress)
        progress.note("stopping the servers and helpers")
    data = report(tables, settings, described, progress.elapsed())
    return tables, data


def run(args: argparse.Namespace, write: Callable[[str], None] = print) -> int:
    """``fastwrap bench``: 0 when every contender ran, 1 when one failed, 130 on Ctrl-C.

    The tables and the closing lines go through *write*: the command's
    handles a reader that went away (``| head``).
    """
    problem = problems_before_start(args)
    if problem:
        print(f"fastwrap bench: {problem[1]}", file=sys.stderr)
        return problem[0]
    settings = Settings.from_args(args)
    progress = Progress(sys.stderr, settings.rounds)
    try:
        with sigterm_as_interrupt():
            tables, data = measure_all(settings, progress)
    except KeyboardInterrupt:
        progress.clear()
        print("fastwrap bench: interrupted; the servers, helpers and files are gone",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BenchError as exc:
        progress.clear()
        print(f"fastwrap bench: {exc}", file=sys.stderr)
        return 1
    progress.clear()
    write(render(tables, data))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    if args.plot:
        plot(data, args.plot)
    closing = findings(data)
    if args.json:
        closing.append(f"Every round, as JSON: {os.path.abspath(args.json)}")
    if args.plot:
        closing.append(f"The plot: {os.path.abspath(args.plot)}")
    if not (args.json or args.plot):
        closing.append("--json FILE keeps every round; --plot FILE.png draws the medians.")
    write("\n" + "\n".join(closing))
    failures = [f"{t.key}: {c.name}: {c.failed}" for t in tables for c in t.contenders if c.failed]
    for failure in failures:
        print(f"fastwrap bench: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0
