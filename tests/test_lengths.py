"""How many bytes a transmission sends: count, short, growing, shrinking, empty, huge."""
from __future__ import annotations

import io
import json
import os
import threading

import pytest

import fastwrap
from _support import ALL_PATHS, drive, needs_linux, random_bytes, run_python

DATA = random_bytes(300_000 + 1, seed=30)

FILE_PATHS = pytest.mark.parametrize("disabled", [(), ("sendfile",)],
                                     ids=["sendfile", "readinto"])


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("count", [0, 1, 4095, 65_537, 299_999])
def test_count_sends_exactly_count_bytes(engine, sources, link, path, count):
    source = sources.of_path(path, DATA)
    sent, received = link.exchange(lambda: engine.transmit_file(source, link.dest, count))
    assert sent == count
    assert received == DATA[:count]


@pytest.mark.parametrize("path", ALL_PATHS)
def test_count_beyond_the_end_sends_what_there_is(engine, sources, link, path):
    source = sources.of_path(path, DATA)
    sent, received = link.exchange(
        lambda: engine.transmit_file(source, link.dest, len(DATA) + 12345))
    assert sent == len(DATA)
    assert received == DATA


@FILE_PATHS
def test_count_beyond_the_end_from_a_position(engine, sources, link, disabled):
    if disabled:
        fastwrap.disable(*disabled)
    f = sources.file(DATA)
    f.seek(len(DATA) - 100)
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest, 1000))
    assert sent == 100 and received == DATA[-100:]
    assert f.tell() == len(DATA)


@FILE_PATHS
def test_position_past_the_end_sends_nothing(engine, sources, link, disabled):
    if disabled:
        fastwrap.disable(*disabled)
    f = sources.file(DATA)
    f.seek(len(DATA) + 50)
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest))
    assert sent == 0 and received == b""


@pytest.mark.parametrize("kind", ["file", "bytes", "BytesIO", "pipe", "mmap-anonymous"])
def test_empty_source_sends_nothing_and_returns_zero(engine, sources, link, kind):
    import mmap
    source = {
        "file": lambda: sources.file(b""),
        "bytes": lambda: b"",
        "BytesIO": lambda: io.BytesIO(),
        "pipe": lambda: sources.pipe(b""),
        "mmap-anonymous": lambda: mmap.mmap(-1, 1),
    }[kind]()
    if kind == "mmap-anonymous":
        source.seek(1)  # at the end: nothing left
    sent, received = link.exchange(lambda: engine.FileWrapper(source).transmit(link.dest))
    assert sent == 0 and received == b""


def test_empty_file_transmission_is_done_at_once(engine, sources, socketpair_link):
    tx = engine.Transmission(sources.file(b""), socketpair_link.dest)
    moved, received = socketpair_link.exchange(lambda: drive(tx, socketpair_link.dest))
    assert tx.done and tx.sent == 0 and moved == 0 and received == b""


@needs_linux
def test_proc_file_with_size_zero_is_sent_not_skipped(engine, sources, link):
    path = "/proc/version" if os.path.exists("/proc/version") else "/proc/self/cmdline"
    with open(path, "rb") as f:
        expected = f.read()
    assert expected and os.stat(path).st_size == 0
    f = sources.opened(path, "rb")
    tx = engine.Transmission(f, link.dest)
    assert tx.path == "readinto"
    moved, received = link.exchange(lambda: drive(tx, link.dest))
    assert received == expected and tx.sent == len(expected)


@needs_linux
def test_proc_self_status_is_sent_in_full(engine, sources, link):
    f = sources.opened("/proc/self/status", "rb")
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest))
    assert received.startswith(b"Name:") and received.endswith(b"\n")
    assert sent == len(received) > 200


@needs_linux
def test_proc_file_with_count_sends_count(engine, sources, link):
    f = sources.opened("/proc/self/status", "rb")
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest, 5))
    assert sent == 5 and received == b"Name:"


@FILE_PATHS
def test_file_growing_during_transmission_is_not_overrun(engine, sources, socketpair_link,
                                                         disabled):
    if disabled:
        fastwrap.disable(*disabled)
    data = random_bytes(4_000_000, seed=31)
    f = sources.file(data)
    path = f.name
    grown = threading.Event()

    def grow():
        with open(path, "ab") as g:
            g.write(b"OVERRUN" * 100_000)
        grown.set()

    # The reader appends to the file on its first chunk: the sender is then
    # mid-transfer, blocked on a socket buffer far smaller than the file.
    sent, received = socketpair_link.exchange(
        lambda: engine.FileWrapper(f).transmit(socketpair_link.dest), on_first=grow)
    assert grown.is_set()
    assert received == data
    assert sent == len(data)
    assert f.tell() == len(data)


@FILE_PATHS
def test_length_is_fixed_when_the_transmission_starts(engine, sources, socketpair_link,
                                                      disabled):
    if disabled:
        fastwrap.disable(*disabled)
    data = random_bytes(100_000, seed=32)
    f = sources.file(data)
    tx = engine.Transmission(f, socketpair_link.dest)
    with open(f.name, "ab") as g:
        g.write(b"late" * 1000)
    moved, received = socketpair_link.exchange(lambda: drive(tx, socketpair_link.dest))
    assert received == data and tx.sent == len(data)


@FILE_PATHS
def test_file_shrinking_mid_transfer_ends_without_hang_or_garbage(
        engine, sources, socketpair_link, disabled):
    if disabled:
        fastwrap.disable(*disabled)
    data = random_bytes(6_000_000, seed=33)
    f = sources.file(data)
    dest = socketpair_link.dest
    dest.setblocking(False)
    tx = engine.Transmission(f, dest)
    with pytest.raises(BlockingIOError):
        while True:
            tx.send()
    assert 0 < tx.sent < 1_000_000
    os.truncate(f.name, 2_000_000)
    reader = socketpair_link.reader()
    try:
        drive(tx, dest)
    finally:
        socketpair_link.finish()
    received = reader.result()
    assert tx.done
    assert tx.sent == len(received) == 2_000_000
    assert received == data[:2_000_000]


def test_mmap_of_a_file_truncated_underneath_does_not_kill_the_process(engine, tmp_path):
    # Touching a mapped page past the new end of file is SIGBUS in user space;
    # the engine must let the kernel copy (EFAULT) or stop, never crash.
    code = f"""
import json, mmap, os, socket, threading, {engine.__name__} as engine
path = {str(tmp_path / "shrinks.bin")!r}
data = os.urandom(4 << 20)
with open(path, "wb") as f:
    f.write(data)
f = open(path, "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
os.truncate(path, 4096)
a, b = socket.socketpair()
got = bytearray()
def read():
    while chunk := b.recv(1 << 16):
        got.extend(chunk)
t = threading.Thread(target=read); t.start()
try:
    outcome = engine.transmit_file(m, a)
except OSError as exc:
    outcome = type(exc).__name__
a.shutdown(socket.SHUT_WR); t.join()
print(json.dumps({{"outcome": outcome, "received": len(got),
                  "prefix": bytes(got) == data[:len(got)]}}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    result = json.loads(proc.stdout)
    assert result["prefix"] is True
    assert result["received"] < 4 << 20
    if isinstance(result["outcome"], int):
        assert result["outcome"] == result["received"]


def test_headers_do_not_count_against_count(engine, sources, link):
    f = sources.file(DATA)
    headers = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    sent, received = link.exchange(
        lambda: engine.FileWrapper(f).transmit(link.dest, 10, headers))
    assert sent == 10
    assert received == headers + DATA[:10]


# -- beyond 4 GiB ------------------------------------------------------------------

GiB = 1 << 30
BIG_SIZE = 4 * GiB + (3 << 20)
# Known bytes in an otherwise sparse (all-zero) file: at the start, straddling
# 2 GiB (sendfile's per-call limit), straddling 4 GiB (32-bit offsets), and
# straddling where the count ends.
BIG_COUNT = 4 * GiB + (1 << 20) + 17
MARKERS = {
    0: b"START" + random_bytes(4091, seed=40),
    2 * GiB - 2048: random_bytes(4096, seed=41),
    0x7FFFF000 - 100: random_bytes(200, seed=42),
    4 * GiB - 3000: random_bytes(6000, seed=43),
    BIG_COUNT - 2000: random_bytes(4000, seed=44),
    BIG_SIZE - 1000: random_bytes(1000, seed=45),
}


class SparseChecker:
    """Compares a stream, byte for byte, with the sparse file's content from *start*."""

    def __init__(self, start: int) -> None:
        self.offset = start
        self.zeros = bytes(1 << 20)
        self.mismatch = None

    def expected(self, offset: int, n: int) -> bytes:
        out = bytearray(n)
        for at, marker in MARKERS.items():
            lo, hi = max(at, offset), min(at + len(marker), offset + n)
            if lo < hi:
                out[lo - offset:hi - offset] = marker[lo - at:hi - at]
        return bytes(out)

    def __call__(self, view: memoryview) -> None:
        n = len(view)
        plain = all(at + len(m) <= self.offset or at >= self.offset + n
                    for at, m in MARKERS.items())
        # bytes == bytes is a memcmp; memoryview == bytes unpacks item by item.
        got = view.tobytes()
        if plain:
            ok = got == (self.zeros if n == len(self.zeros) else self.zeros[:n])
        else:
            ok = got == self.expected(self.offset, n)
        if not ok and self.mismatch is None:
            self.mismatch = self.offset
        self.offset += n


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse") / "big.bin"
    with open(path, "wb") as f:
        f.truncate(BIG_SIZE)
        for at, marker in MARKERS.items():
            f.seek(at)
            f.write(marker)
    yield path
    path.unlink()


@needs_linux
@pytest.mark.slow
def test_sparse_file_over_4_gib_is_sent_by_sendfile_byte_exact(engine, sparse_file, link):
    checker = SparseChecker(0)
    with open(sparse_file, "rb") as f:
        tx = engine.Transmission(f, link.dest, BIG_COUNT)
        assert tx.path == "sendfile"
        reader = link.reader(sink=checker, bufsize=1 << 20)
        try:
            drive(tx, link.dest)
        finally:
            link.finish()
        reader.result()
        assert tx.sent == BIG_COUNT
        assert f.tell() == BIG_COUNT
    assert reader.length == BIG_COUNT
    assert checker.mismatch is None, f"first wrong byte near offset {checker.mismatch}"


@needs_linux
@pytest.mark.slow
def test_sparse_file_sent_from_a_position_past_4_gib(engine, sparse_file, socketpair_link):
    start = 4 * GiB - 2500
    checker = SparseChecker(start)
    with open(sparse_file, "rb") as f:
        f.seek(start)
        reader = socketpair_link.reader(sink=checker)
        try:
            sent = engine.FileWrapper(f).transmit(socketpair_link.dest)
        finally:
            socketpair_link.finish()
        reader.result()
        assert f.tell() == BIG_SIZE
    assert sent == reader.length == BIG_SIZE - start
    assert checker.mismatch is None, f"first wrong byte near offset {checker.mismatch}"


@needs_linux
@pytest.mark.slow
def test_sparse_file_past_4_gib_by_readinto(engine, sparse_file, socketpair_link):
    fastwrap.disable("sendfile")
    start = 4 * GiB - 5000
    checker = SparseChecker(start)
    with open(sparse_file, "rb") as f:
        f.seek(start)
        reader = socketpair_link.reader(sink=checker)
        try:
            sent = engine.FileWrapper(f).transmit(socketpair_link.dest, 10_000)
        finally:
            socketpair_link.finish()
        reader.result()
        assert f.tell() == start + 10_000
    assert sent == reader.length == 10_000
    assert checker.mismatch is None
