"""What the bench measures and what came of it: settings, metrics, samples, contenders, tables."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable, Optional


KIB = 1024
MIB = 1024 * KIB
SMALL = 4 * KIB
MEDIUM = 1 * MIB
CHUNK = 65536                  # the read loop's chunk, as in the stdlib's copy loops
HANG = 600.0                   # how long a reply from a helper may take before the run is hung
COST_BATCHES = 5               # a cost sample is the fastest of this many runs of its batch
START_TIMEOUT = 60.0           # how long a server may take to say where it listens
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

FASTWRAP = "fastwrap"
BASELINE = "baseline"
REFERENCE = "reference"


class BenchError(Exception):
    """A contender or a helper failed; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """How much to measure: sizes, transmissions per sample, rounds."""

    rounds: int
    quick: bool
    large: int
    small_times: int       # 4 KiB transmissions per sample
    medium_times: int      # 1 MiB transmissions per sample
    cost_times: int        # 4 KiB transmissions per sample, when their cost is the question
    http_seconds: float    # how long the clients send requests, per sample
    clients: int           # HTTP client processes

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        quick = bool(args.quick)
        rounds = args.rounds or (2 if quick else 5)
        size_mib = args.size_mib or (2 if quick else 256)
        if quick:
            return cls(rounds, quick, size_mib * MIB, small_times=64, medium_times=4,
                       cost_times=128, http_seconds=0.1, clients=2)
        return cls(rounds, quick, size_mib * MIB, small_times=512, medium_times=32,
                   cost_times=1024, http_seconds=0.3, clients=2)


# -- what is measured, and what came of it --------------------------------------

@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    tag: str = ""          # follows the baseline in the headers of its ratio columns


GBPS = Metric("gbps", "GB/s", True)
CPU_PER_GB = Metric("cpu_s_per_gb", "CPU s/GB", False)
REQUESTS = Metric("requests_per_s", "req/s", True)
MICROS = Metric("us_per_transmission", "us/transmission", False)
CPU_MICROS = Metric("cpu_us_per_transmission", "CPU us", False)
OVERHEAD = Metric("overhead_us", "overhead us", False, tag="ovh")


@dataclass
class Sample:
    """One measurement: its figures and the fastwrap paths its transmissions ended on."""

    values: dict[str, float]
    paths: dict[str, int] = field(default_factory=dict)


@dataclass
class Contender:
    """One way of sending, measured once per round."""

    name: str
    role: str                                    # FASTWRAP, BASELINE or REFERENCE
    measure: Optional[Callable[[bool], Sample]]   # True: a warm-up, whose figures are dropped
    short: str = ""                              # its column label, as a baseline
    engine: Optional[str] = None
    path: Optional[str] = None                   # the fastwrap path it must take
    skipped: Optional[str] = None
    failed: Optional[str] = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    paths: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.skipped is None and self.failed is None and self.measure is not None

    def values(self, key: str) -> list[float]:
        return [entry[key] for entry in self.rounds]


@dataclass
class Table:
    """Contenders measured alike, and the pairs whose ratios are reported."""

    key: str
    section: str
    title: str
    metrics: tuple[Metric, ...]
    contenders: list[Contender]
    pairs: list[tuple[str, str]]                 # (fastwrap contender, baseline) names
    shown: tuple[Metric, ...]                    # metrics with ratio columns in the text table
    notes: tuple[str, ...] = ()
    warmup: bool = True
    reference: Optional[str] = None              # overhead is measured against this one
    derived: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)

    def contender(self, name: str) -> Contender:
        for contender in self.contenders:
            if contender.name == name:
                return contender
        raise KeyError(name)


SECTION_NOTES = {
    "a": ("splice rows read a pipe (buffered, as subprocess makes them) that a helper process "
          "fills with the file;",
          "readinto and read rows are fastwrap with the faster paths switched off.",),
    "b": ("http.server and wsgiref.simple_server answer HTTP/1.0, one request per connection "
          "(the client reconnects),",
          "and write their request logs to DEVNULL; fastwrap serve keeps the connection alive.",),
    "c": (f"each figure is the fastest of {COST_BATCHES} runs of the transmissions: "
          "what they cost when nothing else got in the way;",
          "overhead: us per transmission less a bare os.sendfile's in the same round "
          "(the kernel's share);",
          "CPU us: the sender's CPU time per transmission; x ... ovh: the ratio of the "
          "overheads.",),
    "d": ("[path]: the fastwrap path the transmissions took.",),
}

SECTIONS = {
    "a": "a) Throughput from the page cache, and the sender's CPU per GB",
    "b": "b) HTTP requests per second",
    "c": "c) Cost of one 4 KiB transmission (many on one connection)",
    "d": "d) A pipe source and a TLS destination, against the read loop",
}
