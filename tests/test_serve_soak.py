"""Soak: ``fastwrap serve`` under a crowd, for a bounded time.

For ``FASTWRAP_SOAK_SECONDS`` (default 5) the server holds 1,000 idle
connections (half of them after a first request, kept alive), answers 64
clients fetching files on keep-alive connections (whole files, ranges,
conditional requests; some leave mid-body, half of those with a reset),
while slowloris clients trickle request heads a byte at a time and a writer
keeps replacing files by rename with new versions.

Every version of every file starts with a line naming its file and version
and goes on with a fill pattern of its own, so each body is checkable: a
whole 200 equals its version exactly, with that version's length; a 206 is
the same slice of it; and an ``ETag`` always stands for one content (the
same ETag on two different contents would be a stale header).  The
slowloris clients must be closed by the head time limit while the others
are served.  The server's descriptors and RSS, read from ``/proc`` with no
client connected after a warm-up and again at the end, must be back to the
baseline and flat, and the server must still answer.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import resource
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from _static_support import ServeProcess

SECONDS = float(os.environ.get("FASTWRAP_SOAK_SECONDS", "5"))
IDLE = 1000
ACTIVE = 64
SLOWLORIS = 8
FILES = 120
MAX_SIZE = 192 * 1024
RSS_TOLERANCE = 24 * 1024 * 1024
HEAD_TIMEOUT = 1.5
# Flags of `fastwrap serve` the soak sets: a short head time limit so that the
# slowloris clients are closed within the run, and an idle time long enough
# that the idle crowd stays connected for all of it.
SERVE_FLAGS = ("--quiet", "--head-timeout", str(HEAD_TIMEOUT),
               "--idle-timeout", "120", "--max-connections", "4000")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                       reason="counts the server's descriptors and RSS through /proc"),
]


def content(index: int, version: int, size: int) -> bytes:
    """Version *version* of file *index*: a line naming both, then its own pattern."""
    first = f"{index:06d} {version:08d}\n".encode()
    block = random.Random(index * 1_000_003 + version).randbytes(4096)
    return (first + block * (size // 4096 + 1))[:max(size, len(first))]


class Store:
    """The served files and every version each has had."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.sizes: Dict[Tuple[int, int], int] = {}
        self.versions = [0] * FILES
        self.replaced = 0
        for index in range(FILES):
            self._write(index, 0)

    def name(self, index: int) -> str:
        return f"f{index:04d}.bin"

    def _size(self) -> int:
        return self.rng.choice([0, 17, 4096, 4096, 20_000, self.rng.randrange(MAX_SIZE)])

    def _write(self, index: int, version: int) -> None:
        size = self._size()
        data = content(index, version, size)
        tmp = self.root / f".tmp-{index}-{version}"
        tmp.write_bytes(data)
        with self.lock:
            self.sizes[(index, version)] = len(data)
        os.replace(tmp, self.root / self.name(index))  # in-flight sends keep the old inode
        with self.lock:
            self.versions[index] = version

    def replace_one(self) -> None:
        index = self.rng.randrange(FILES)
        self._write(index, self.versions[index] + 1)
        self.replaced += 1

    def check(self, index: int, body: bytes, start: int, total: Optional[int]) -> str:
        """'' if *body* is bytes start.. of a version of file *index*, else what is wrong."""
        first = body[:16] if start == 0 else None
        candidates = []
        with self.lock:
            known = {v: n for (i, v), n in self.sizes.items() if i == index}
        if first is not None and len(first) == 16:
            try:
                i, v = int(first[:6]), int(first[7:15])
            except ValueError:
                return f"first line {first!r} names no version"
            candidates = [v] if i == index and v in known else []
        else:
            candidates = sorted(known)
        for version in candidates:
            size = known[version]
            if total is not None and size != total:
                continue
            if content(index, version, size)[start:start + len(body)] == body:
                return ""
        return (f"{len(body)} bytes at {start} of {self.name(index)} match no version "
                f"(total {total}, versions {sorted(known)})")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.aborted = 0
        self.wrong: List[str] = []
        self.etags: Dict[str, str] = {}

    def etag(self, tag: Optional[str], body: bytes, what: str) -> None:
        if tag is None:
            return
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            seen = self.etags.setdefault(tag, digest)
        if seen != digest:
            self.bad(f"ETag {tag} stands for two contents ({what})")

    def bad(self, message: str) -> None:
        with self.lock:
            self.wrong.append(message)


def _pid_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _pid_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _settle(pid: int, baseline: int, seconds: float = 15.0) -> int:
    """The server's descriptor count once it is back to *baseline* (or after *seconds*)."""
    deadline = time.monotonic() + seconds
    while True:
        count = _pid_fds(pid)
        if count <= baseline or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def _client(served: ServeProcess, store: Store, tally: Tally, stop: threading.Event,
            seed: int) -> None:
    rng = random.Random(seed)
    conn: Optional[http.client.HTTPConnection] = None
    while not stop.is_set():
        if conn is None:
            conn = served.connection(timeout=30)
        index = rng.randrange(FILES)
        target = "/" + store.name(index)
        kind = rng.random()
        headers = {}
        start = 0
        if kind < 0.2:
            start = rng.randrange(64)
            headers["Range"] = f"bytes={start}-{start + rng.randrange(1, 9000)}"
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            if kind > 0.9 and response.status == 200:
                # Leave mid-body: read a little, then hang up (a reset half the time).
                response.read(rng.randrange(1, 2048))
                if rng.random() < 0.5 and conn.sock is not None:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                conn.close()
                conn = None
                with tally.lock:
                    tally.aborted += 1
                continue
            body = response.read()
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            tally.bad(f"GET {target}: {exc!r}")
            with contextlib.suppress(OSError):
                conn.close()
            conn = None
            continue
        what = f"GET {target} {headers}"
        if response.status == 200:
            total = int(response.getheader("Content-Length", "-1"))
            if total != len(body):
                tally.bad(f"{what}: Content-Length {total}, {len(body)} bytes")
            problem = store.check(index, body, 0, len(body))
            if problem:
                tally.bad(f"{what}: {problem}")
            tally.etag(response.getheader("ETag"), body, what)
        elif response.status == 206:
            unit, _, spec = (response.getheader("Content-Range") or "").partition(" ")
            span, _, size = spec.partition("/")
            first = int(span.split("-")[0])
            if unit != "bytes" or first != start:
                tally.bad(f"{what}: Content-Range {response.getheader('Content-Range')}")
            problem = store.check(index, body, first, int(size))
            if problem:
                tally.bad(f"{what}: {problem}")
        elif response.status != 416:  # a range past the end of a version now shorter
            tally.bad(f"{what}: status {response.status}")
        with tally.lock:
            tally.ok += 1
        if response.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def _slowloris(served: ServeProcess, tally: Tally, stop: threading.Event,
               closed: List[int]) -> None:
    """Trickle a head a byte at a time; the server must close it (head time limit)."""
    while not stop.is_set():
        sock = socket.create_connection((served.host, served.port), timeout=10)
        began = time.monotonic()
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000:
                if stop.is_set():
                    return
                sock.send(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - began > HEAD_TIMEOUT * 8:
                    tally.bad("a slowloris client was still connected after "
                              f"{HEAD_TIMEOUT * 8} s")
                    return
        except OSError:
            with tally.lock:
                closed.append(1)
        finally:
            sock.close()


def test_soak_idle_crowd_active_clients_slowloris_aborts_and_renames(engine, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE + ACTIVE + SLOWLORIS + 200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} the soak needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        _soak(engine, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soak(engine, tmp_path: Path) -> None:
    store = Store(tmp_path, seed=7)
    served = ServeProcess(engine, tmp_path, *SERVE_FLAGS)
    tally = Tally()
    idle: List[socket.socket] = []
    try:
        pid = served.proc.pid
        # Warm up: every file once, then the baseline with no client connected.
        for index in range(FILES):
            response, body = served.get("/" + store.name(index))
            assert response.status == 200 and not store.check(index, body, 0, len(body))
        time.sleep(0.5)
        baseline_fds = _pid_fds(pid)
        baseline_rss = _pid_rss(pid)

        for i in range(IDLE):
            sock = socket.create_connection((served.host, served.port), timeout=30)
            if i % 2:
                sock.sendall(b"GET /" + store.name(i % FILES).encode() +
                             b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            idle.append(sock)

        stop = threading.Event()
        closed: List[int] = []
        threads = [threading.Thread(target=_client, args=(served, store, tally, stop, n))
                   for n in range(ACTIVE)]
        threads += [threading.Thread(target=_slowloris, args=(served, tally, stop, closed))
                    for _ in range(SLOWLORIS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            store.replace_one()
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), "a client thread hung"

        # The idle crowd is still connected and still served.
        for sock in idle[0:100:2]:
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status = sock.recv(12)
            assert status == b"HTTP/1.1 200", f"an idle connection got {status!r}"
        for sock in idle:
            sock.close()
        idle.clear()

        assert not tally.wrong, f"{len(tally.wrong)} wrong answers, first: {tally.wrong[:5]}"
        assert tally.ok > ACTIVE, f"only {tally.ok} answers in {SECONDS} s"
        assert closed, "no slowloris client was closed by the head time limit"
        assert store.replaced > 10

        fds = _settle(pid, baseline_fds)
        assert fds <= baseline_fds, f"descriptors: {baseline_fds} before, {fds} after"
        rss = _pid_rss(pid)
        assert rss - baseline_rss < RSS_TOLERANCE, (
            f"RSS grew by {(rss - baseline_rss) / 2**20:.1f} MiB over the soak")
        response, _ = served.get("/")
        assert response.status == 200, "the server stopped answering"
        assert served.proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
        served.stop()
