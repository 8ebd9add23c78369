"""The tables: which contenders each holds, and how each contender is measured."""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Sequence

import fastwrap

from .children import Helper
from .links import Links
from .machine import why_unavailable
from .model import (
    BASELINE, CPU_MICROS, CPU_PER_GB, FASTWRAP, GBPS, KIB, MEDIUM, MIB, MICROS, OVERHEAD,
    REFERENCE, REQUESTS, SMALL, Contender, Sample, Settings, Table,
)
from .servers import Server, http_sample
from .ways import (
    Way, bare_sendfile_way, copyfileobj_way, cost_sample, fastwrap_file_way, fastwrap_mmap_way,
    fastwrap_pipe_to_end_way, fastwrap_pipe_way, read_loop_pipe_way, read_loop_way,
    socket_sendfile_way, throughput_sample, wsgiref_way,
)


# -- the tables -------------------------------------------------------------------------

@dataclass
class Bench:
    """Everything the contenders need: files, helpers, links, servers."""

    settings: Settings
    files: dict[int, str]              # size -> path
    opened: dict[int, BinaryIO]
    mapped: dict[int, mmap.mmap]
    links: Links
    feeder: Helper
    clients: list[Helper]
    servers: list[Server]
    server_errors: dict[str, str]
    tls_skip: Optional[str]
    engines: list[tuple[str, Any, Optional[str]]]


def _size_label(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def _link_label(kind: str) -> str:
    labels = {"tcp": "loopback TCP", "socketpair": "socketpair", "tls": "TLS over loopback TCP"}
    return labels[kind]


def _ratio_pairs(contenders: list[Contender], baselines: Sequence[str]) -> list[tuple[str, str]]:
    return [(c.name, b) for c in contenders if c.role == FASTWRAP for b in baselines]


def fastwrap_path_way(bench: Bench, engine: Any, path: str, size: int) -> Way:
    """How to make *engine* send the file of *size* along *path*."""
    f = bench.opened[size]
    if path == "splice":
        return fastwrap_pipe_way(engine, bench.feeder, bench.files[size], size)
    if path == "mmap":
        return fastwrap_mmap_way(engine, bench.mapped[size])
    faster = {"sendfile": (), "readinto": ("sendfile",), "read": ("sendfile", "readinto")}
    return fastwrap_file_way(engine, f, faster[path])


Sampler = Callable[[Links, str, Way, int, int, Optional[str]], Sample]


class Rows:
    """A table's contenders, each measured by *sampler*: *times* transmissions of *size*.

    A warm-up sample makes a sixteenth of the transmissions, and is thrown away.
    """

    def __init__(self, bench: Bench, sampler: Sampler, kind: str, times: int, size: int) -> None:
        self.bench = bench
        self.sampler = sampler
        self.kind = kind
        self.times = times
        self.size = size
        self.contenders: list[Contender] = []

    def add(self, label: str, role: str, way: Optional[Way], *, short: str = "",
            engine: Optional[str] = None, path: Optional[str] = None,
            skipped: Optional[str] = None) -> None:
        measure = None if way is None or skipped else self._measure(way, path)
        self.contenders.append(Contender(label, role, measure, short=short, engine=engine,
                                         path=path, skipped=skipped))

    def _measure(self, way: Way, path: Optional[str]) -> Callable[[bool], Sample]:
        def measure(warmup: bool) -> Sample:
            times = max(1, self.times // 16) if warmup else self.times
            return self.sampler(self.bench.links, self.kind, way, times, self.size, path)
        return measure

    def pairs_with(self, baselines: Sequence[str]) -> list[tuple[str, str]]:
        """Every fastwrap contender against each of *baselines*."""
        return [(c.name, b) for c in self.contenders if c.role == FASTWRAP for b in baselines]

    def baselines(self) -> list[str]:
        return [c.name for c in self.contenders if c.role == BASELINE]


def throughput_table(bench: Bench, which: str, size: int, times: int, kind: str) -> Table:
    """Table a for one file (*which*: small, medium or large) and one kind of link."""
    f = bench.opened[size]
    rows = Rows(bench, throughput_sample, kind, times, size)
    for engine_name, engine, missing in bench.engines:
        for path in fastwrap.PATHS:
            reason = missing if engine is None else why_unavailable(engine, path)
            label = f"fastwrap {engine_name} {path}" + (" (pipe)" if path == "splice" else "")
            rows.add(label, FASTWRAP,
                     None if reason else fastwrap_path_way(bench, engine, path, size),
                     engine=engine_name, path=path, skipped=reason)
    rows.add("wsgiref FileWrapper + sendall", BASELINE, wsgiref_way(f), short="wsgiref")
    rows.add("socket.sendfile", BASELINE, socket_sendfile_way(f), short="sock.sendfile")
    rows.add("copyfileobj to makefile('wb')", BASELINE, copyfileobj_way(f), short="copyfileobj")
    return Table(
        f"a/{which}/{kind}", "a",
        f"{_size_label(size)} file x {times} per sample, {_link_label(kind)}",
        (GBPS, CPU_PER_GB), rows.contenders, rows.pairs_with(rows.baselines()), (GBPS,),
        warmup=times > 1)


def http_table(bench: Bench, size: int) -> Table:
    """Table b for one file size: each server, the same clients."""
    path = f"/{os.path.basename(bench.files[size])}"
    contenders = []
    shorts = {"fastwrap serve": "", "http.server": "http.server", "wsgiref": "wsgiref"}
    labels = {"fastwrap serve": "fastwrap serve",
              "http.server": "python -m http.server",
              "wsgiref": "wsgiref.simple_server + StaticFiles"}
    for server in bench.servers:
        role = FASTWRAP if server.name == "fastwrap serve" else BASELINE
        error = bench.server_errors.get(server.name)

        def measure(warmup: bool, server: Server = server) -> Sample:
            seconds = bench.settings.http_seconds / (4 if warmup else 1)
            return http_sample(bench.clients, server.port, path, size, seconds)
        contenders.append(Contender(labels[server.name], role, None if error else measure,
                                    short=shorts[server.name], skipped=error))
    fastwrap_serve = next((s for s in bench.servers if s.name == "fastwrap serve"), None)
    note = f": {fastwrap_serve.note}" if fastwrap_serve and fastwrap_serve.note else ""
    baselines = [c.name for c in contenders if c.role == BASELINE]
    return Table(
        f"b/{'small' if size == SMALL else 'medium'}", "b",
        f"{_size_label(size)} file, {len(bench.clients)} client processes, "
        f"{bench.settings.http_seconds:g} s per sample",
        (REQUESTS,), contenders, _ratio_pairs(contenders, baselines), (REQUESTS,),
        notes=(f"fastwrap serve{note}",) if note else ())


def cost_table(bench: Bench, kind: str) -> Table:
    """Table c: the cost of one 4 KiB transmission, against the kernel's own."""
    f, times = bench.opened[SMALL], bench.settings.cost_times
    rows = Rows(bench, cost_sample, kind, times, SMALL)
    bare_skip = None if hasattr(os, "sendfile") else "no os.sendfile here"
    rows.add("os.sendfile, bare", REFERENCE, bare_sendfile_way(f, SMALL), skipped=bare_skip)
    for engine_name, engine, missing in bench.engines:
        reason = missing if engine is None else why_unavailable(engine, "sendfile")
        rows.add(f"fastwrap {engine_name}", FASTWRAP,
                 None if reason else fastwrap_file_way(engine, f),
                 short=engine_name, engine=engine_name, path="sendfile", skipped=reason)
    rows.add("socket.sendfile", BASELINE, socket_sendfile_way(f), short="sock.sendfile")
    pairs = rows.pairs_with(["socket.sendfile"])
    if len(bench.engines) > 1:
        pairs.append(("fastwrap cython", "fastwrap python"))
    return Table(
        f"c/{kind}", "c", f"4 KiB x {times} per sample, {_link_label(kind)}",
        (MICROS, CPU_MICROS), rows.contenders, pairs, (OVERHEAD,), reference="os.sendfile, bare")


def read_loop_table(bench: Bench, source: str) -> Table:
    """Table d: the large file through a pipe to TCP, or 1 MiB files to a TLS socket.

    TLS runs at a fraction of plain TCP's speed: many 1 MiB files keep its samples short.
    """
    if source == "pipe":
        kind, size, times = "tcp", bench.settings.large, 1
        skip = None
        title = f"a pipe (filled by a helper process) to {_link_label(kind)}, {_size_label(size)}"
    else:
        kind, size, times = "tls", MEDIUM, bench.settings.medium_times
        skip = bench.tls_skip
        title = f"{_size_label(size)} file x {times} per sample, {_link_label(kind)}"
    name, f = bench.files[size], bench.opened[size]
    rows = Rows(bench, throughput_sample, kind, times, size)
    for engine_name, engine, missing in bench.engines:
        way = None
        if engine is not None:
            way = (fastwrap_pipe_to_end_way(engine, bench.feeder, name) if source == "pipe"
                   else fastwrap_file_way(engine, f))
        rows.add(f"fastwrap {engine_name}", FASTWRAP, way, engine=engine_name,
                 skipped=missing or skip)
    loop = read_loop_pipe_way(bench.feeder, name) if source == "pipe" else read_loop_way(f)
    rows.add("read loop + sendall", BASELINE, loop, short="read loop", skipped=skip)
    return Table(
        f"d/{source}/{kind}", "d", title, (GBPS, CPU_PER_GB), rows.contenders,
        rows.pairs_with(rows.baselines()), (GBPS,), warmup=times > 1)


def build_tables(bench: Bench) -> list[Table]:
    settings = bench.settings
    tables = []
    for which, size, times in (("small", SMALL, settings.small_times),
                               ("medium", MEDIUM, settings.medium_times),
                               ("large", settings.large, 1)):
        for kind in ("tcp", "socketpair"):
            tables.append(throughput_table(bench, which, size, times, kind))
    tables += [http_table(bench, SMALL), http_table(bench, MEDIUM)]
    tables += [cost_table(bench, "tcp"), cost_table(bench, "socketpair")]
    tables += [read_loop_table(bench, "pipe"), read_loop_table(bench, "file")]
    return tables
