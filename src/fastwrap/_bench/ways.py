"""Measuring: the ways of sending a file, and timing transmissions over a link."""
from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import socket
import time
import wsgiref.util
from typing import Any, BinaryIO, Callable, ContextManager, Iterator, Optional, Sequence

import fastwrap
from fastwrap import _paths

from .children import Helper
from .links import Links, fed_pipe
from .model import CHUNK, COST_BATCHES, BenchError, Sample


# -- measuring -----------------------------------------------------------------------

SendOne = Callable[[], None]
# A way of sending: given the socket and the transmissions to come, a context
# whose setup and teardown are not timed and which yields one transmission.
Way = Callable[[socket.socket, int], ContextManager[SendOne]]


def _path_counts() -> dict[str, int]:
    return {path: entry["transmissions"] for path, entry in fastwrap.stats().items()}


def transfer(links: Links, kind: str, way: Way, times: int, size: int,
             expect_path: Optional[str]) -> tuple[float, float, dict[str, int]]:
    """Time *times* transmissions of *size* bytes on one connection.

    The clock stops when the receiving process has counted every byte, so
    bytes still in socket buffers are not taken for bytes sent.  Returns
    (wall seconds, CPU seconds of this process, transmissions per fastwrap path).
    """
    with links.connect(kind) as connection, way(connection.sock, times) as send_one:
        before = _path_counts()
        cpu_start = time.process_time()
        start = time.perf_counter()
        for _ in range(times):
            send_one()
        connection.finish(times * size)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        after = _path_counts()
    paths = {path: after[path] - before[path] for path in after if after[path] != before[path]}
    if expect_path is not None and paths != {expect_path: times}:
        raise BenchError(f"expected {times} transmissions by {expect_path}, got {paths}")
    return seconds, cpu, paths


def throughput_sample(links: Links, kind: str, way: Way, times: int, size: int,
                      expect_path: Optional[str]) -> Sample:
    seconds, cpu, paths = transfer(links, kind, way, times, size, expect_path)
    gigabytes = times * size / 1e9
    # CPU time is counted in clock ticks on some systems: never report zero.
    return Sample({"gbps": gigabytes / seconds, "cpu_s_per_gb": max(cpu, 1e-9) / gigabytes},
                  paths)


def cost_sample(links: Links, kind: str, way: Way, times: int, size: int,
                expect_path: Optional[str]) -> Sample:
    """The fastest of COST_BATCHES runs of *times* transmissions, in wall and in CPU time.

    A transmission costs microseconds: another process woken on the machine
    during a batch shows in its figure, as much as the transmissions do.
    Such noise only ever adds time, so the least of several runs is the
    nearest to the cost itself, and the overhead over a bare os.sendfile
    (the difference of two such figures) measures the wrapping, not the noise.
    """
    runs = [transfer(links, kind, way, times, size, expect_path) for _ in range(COST_BATCHES)]
    seconds = min(run[0] for run in runs)
    cpu = min(run[1] for run in runs)
    paths: dict[str, int] = {}
    for _seconds, _cpu, taken in runs:
        for path, count in taken.items():
            paths[path] = paths.get(path, 0) + count
    return Sample({"us_per_transmission": seconds / times * 1e6,
                   "cpu_us_per_transmission": max(cpu, 1e-9) / times * 1e6}, paths)


@contextlib.contextmanager
def paths_off(paths: Sequence[str]) -> Iterator[None]:
    """Switch *paths* off for a moment, so that a file takes a slower path."""
    already = _paths.disabled()
    if paths:
        fastwrap.disable(*paths)
    try:
        yield
    finally:
        back = [path for path in paths if path not in already]
        if back:
            fastwrap.enable(*back)


def fastwrap_file_way(engine: Any, f: BinaryIO, off: Sequence[str] = ()) -> Way:
    """A WSGI server's work per response: wrap the file, transmit it."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            f.seek(0)
            engine.FileWrapper(f).transmit(sock)
        with paths_off(off):
            yield send
    return way


def fastwrap_mmap_way(engine: Any, memory: mmap.mmap) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            memory.seek(0)
            engine.FileWrapper(memory).transmit(sock)
        yield send
    return way


def fastwrap_pipe_way(engine: Any, feeder: Helper, name: str, size: int) -> Way:
    """Pipe sources end where the feeder stops: each transmission takes *size* bytes."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with fed_pipe(feeder, name, times) as reader:
            def send() -> None:
                engine.FileWrapper(reader).transmit(sock, size)
            yield send
    return way


def wsgiref_way(f: BinaryIO) -> Way:
    """What a server without a file_wrapper fast path does: iterate, sendall each block."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            f.seek(0)
            for block in wsgiref.util.FileWrapper(f):
                sock.sendall(block)
        yield send
    return way


def socket_sendfile_way(f: BinaryIO) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            f.seek(0)
            sock.sendfile(f)
        yield send
    return way


def copyfileobj_way(f: BinaryIO) -> Way:
    """http.server's way: shutil.copyfileobj into a file made of the socket."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with sock.makefile("wb") as writer:
            def send() -> None:
                f.seek(0)
                shutil.copyfileobj(f, writer)
                writer.flush()
            yield send
    return way


def bare_sendfile_way(f: BinaryIO, size: int) -> Way:
    """The kernel's own cost: os.sendfile of the whole file, nothing around it."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        out, fd = sock.fileno(), f.fileno()

        def send() -> None:
            offset = 0
            while offset < size:
                offset += os.sendfile(out, fd, offset, size - offset)
        yield send
    return way


def read_loop_way(f: BinaryIO) -> Way:
    """The plain loop a file reaches a TLS socket by, or a pipe any socket."""
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        def send() -> None:
            with contextlib.suppress(OSError):
                f.seek(0)  # a file; a pipe cannot seek and needs not
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                sock.sendall(chunk)
        yield send
    return way


def read_loop_pipe_way(feeder: Helper, name: str) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with fed_pipe(feeder, name, times) as reader:
            with read_loop_way(reader)(sock, times) as send:
                yield send
    return way


def fastwrap_pipe_to_end_way(engine: Any, feeder: Helper, name: str) -> Way:
    @contextlib.contextmanager
    def way(sock: socket.socket, times: int) -> Iterator[SendOne]:
        with fed_pipe(feeder, name, times) as reader:
            def send() -> None:
                engine.FileWrapper(reader).transmit(sock)
            yield send
    return way
