"""What a step waits for: the destination, the source, or the disk.

An event loop can only park a transmission on the right thing if the
transmission says what it is; waiting for writability while the source is
an empty pipe spins the loop, and sending a file that is not in the page
cache holds the loop on the disk.
"""
from __future__ import annotations

import os
import socket

import pytest

from _support import LINUX, random_bytes, recv_until_eof

from fastwrap._plan import RESIDENT_WINDOW

DATA = random_bytes(6 * 1024 * 1024 + 5, seed=61)


def evict(path: str) -> None:
    """Drop *path*'s pages from the page cache, as after a reboot or memory pressure."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def resident_pages(path: str) -> int:
    import mmap
    from fastwrap import _purepy
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        return _purepy._resident(f.fileno(), 0, min(size, RESIDENT_WINDOW)) // mmap.PAGESIZE


def drive_fetching(tx, a, b):
    """Drive *tx* on *a* as an event loop would, fetching where it waits for the disk.

    Returns what *b* received and how many fetches it took.
    """
    received = bytearray()
    fetches = 0
    while not tx.done:
        waiting = tx.waiting
        if waiting is not None and waiting.event == "disk":
            tx.fetch()
            fetches += 1
        try:
            tx.send()
        except BlockingIOError:
            pass
        if tx.waiting is not None and tx.waiting.event == "write":
            received += b.recv(8 << 20)
    a.close()
    received += recv_until_eof(b)
    return bytes(received), fetches


@pytest.fixture
def cold_file(tmp_path):
    path = str(tmp_path / "cold.bin")
    with open(path, "wb") as f:
        f.write(DATA)
    evict(path)
    if resident_pages(path):
        pytest.skip("this filesystem keeps evicted pages resident (no POSIX_FADV_DONTNEED)")
    return path


def test_waiting_is_none_before_any_step_and_when_done(engine):
    a, b = socket.socketpair()
    with a, b:
        tx = engine.Transmission(b"abc", a)
        assert tx.waiting is None
        assert tx.send() == 3 and tx.done
        assert tx.waiting is None


def test_full_destination_waits_for_write_on_it(engine):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tx = engine.Transmission(DATA, a)
        tx.send()
        assert tx.waiting == (a.fileno(), "write")
        assert tx.waiting.event == "write" and tx.waiting.fd == a.fileno()
        with pytest.raises(BlockingIOError):
            tx.send()
        assert tx.waiting == (a.fileno(), "write")
        tx.close()


@pytest.mark.parametrize("buffering", [0, -1], ids=["raw-pipe", "buffered-pipe"])
def test_empty_nonblocking_pipe_waits_for_read_on_the_source(engine, buffering):
    r, w = os.pipe()
    os.set_blocking(r, False)
    a, b = socket.socketpair()
    with a, b, open(r, "rb", buffering=buffering) as src:
        a.setblocking(False)
        tx = engine.Transmission(src, a, 10, headers=b"H:")
        try:
            tx.send()  # the headers leave; the body has nothing yet
        except BlockingIOError:
            pass
        assert tx.waiting == (r, "read"), tx.path
        with pytest.raises(BlockingIOError):
            tx.send()
        assert tx.waiting == (r, "read")
        os.write(w, b"0123456789")
        os.close(w)
        while not tx.done:
            tx.send()
        assert tx.waiting is None
        assert b.recv(100) == b"H:0123456789"


@pytest.mark.skipif(not LINUX, reason="page-cache residency is probed with mincore on Linux")
def test_nowait_never_sends_a_cold_page_and_fetch_brings_it_in(engine, cold_file):
    a, b = socket.socketpair()
    with a, b, open(cold_file, "rb") as f:
        a.setblocking(False)
        tx = engine.Transmission(f, a, nowait=True)
        assert tx.path == "sendfile"
        with pytest.raises(BlockingIOError):
            tx.send()  # nothing resident: nothing sent, the disk is not waited for
        assert tx.sent == 0
        assert tx.waiting == (f.fileno(), "disk")
        received, fetches = drive_fetching(tx, a, b)
        assert received == DATA
        assert f.tell() == len(DATA)
        assert 1 <= fetches <= len(DATA) // RESIDENT_WINDOW + 2


@pytest.mark.skipif(not LINUX, reason="page-cache residency is probed with mincore on Linux")
def test_without_nowait_a_cold_file_is_sent_as_before(engine, cold_file):
    a, b = socket.socketpair()
    with a, b, open(cold_file, "rb") as f:
        a.setblocking(False)
        tx = engine.Transmission(f, a)
        assert tx.send() > 0 and tx.sent > 0  # read from the disk within the step
        assert tx.waiting is None or tx.waiting.event == "write"
        tx.close()


@pytest.mark.skipif(not LINUX, reason="page-cache residency is probed with mincore on Linux")
def test_nowait_run_fetches_itself_on_a_blocking_socket(engine, cold_file):
    a, b = socket.socketpair()
    with a, b, open(cold_file, "rb") as f:
        import threading
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(recv_until_eof(b)))
        reader.start()
        assert engine.Transmission(f, a, nowait=True).run() == len(DATA)
        a.close()
        reader.join(30)
        assert bytes(got) == DATA


@pytest.mark.skipif(not LINUX, reason="page-cache residency is probed with mincore on Linux")
def test_nowait_on_a_file_that_shrank_ends_short_instead_of_waiting_forever(
        engine, tmp_path):
    path = str(tmp_path / "shrinks.bin")
    with open(path, "wb") as f:
        f.write(DATA)
    a, b = socket.socketpair()
    with a, b, open(path, "rb") as f:
        a.setblocking(False)
        tx = engine.Transmission(f, a, nowait=True)
        os.truncate(path, 1000)
        evict(path)
        steps = 0
        while not tx.done and steps < 100:
            steps += 1
            step(tx)
        assert tx.done and tx.sent == 1000


def step(tx) -> None:
    """One non-blocking step, then the fetch it asks for if it stopped on the disk."""
    try:
        tx.send()
    except BlockingIOError:
        pass
    if tx.waiting is not None and tx.waiting.event == "disk":
        tx.fetch()


def test_nowait_probes_each_window_once_however_small_the_steps(monkeypatch, tmp_path):
    """A step sends what the socket takes, often far less than the window it probed.

    Probing the window again at every step cost more than the sending (a
    1 MiB probe for 64 KiB sent): the steps after a probe send from it.  The
    pure engine's probe is counted; the compiled one does the same in C.
    """
    from fastwrap import _purepy
    path = tmp_path / "warm.bin"
    path.write_bytes(DATA)
    probes = []
    probe = _purepy._resident
    monkeypatch.setattr(_purepy, "_resident", lambda *args: probes.append(args) or probe(*args))
    a, b = socket.socketpair()
    with a, b, open(path, "rb") as f:
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        tx = _purepy.Transmission(f, a, nowait=True)
        received = bytearray()
        steps = 0
        while not tx.done:
            steps += 1
            step(tx)
            try:
                received += b.recv(8 << 20)
            except BlockingIOError:
                pass
        a.close()
        received += recv_until_eof(b)
    assert bytes(received) == DATA
    windows = -(-len(DATA) // RESIDENT_WINDOW)
    assert steps > 4 * windows  # many small steps...
    assert len(probes) <= 2 * windows + 1  # ...and about one probe per window


@pytest.mark.skipif(not LINUX, reason="page-cache residency is probed with mincore on Linux")
def test_resident_counts_the_bytes_in_the_page_cache(engine, cold_file):
    with open(cold_file, "rb") as f:
        assert engine.resident(f, 0, len(DATA)) == 0
        assert engine.resident(f.fileno(), 100, 0) == 0
        f.seek(3 << 20)
        f.read(4096)  # the kernel reads at least these pages in, maybe more ahead
        assert engine.resident(f, 3 << 20, 4096) == 4096
        assert engine.resident(f, 0, len(DATA)) == 0  # counted up to the first cold page
        f.seek(0)
        f.read()
        assert engine.resident(f, 7, len(DATA) - 7) == len(DATA) - 7
        assert engine.resident(f, len(DATA), 10) == 10  # past the end: nothing to wait for


@pytest.mark.parametrize("args, error, match", [
    ((None, 0, 1), TypeError, "file must be a file descriptor or an object with fileno"),
    ((-1, 0, 1), ValueError, "file descriptor must be >= 0"),
    ((0, -1, 1), ValueError, "offset must be a byte count"),
    ((0, 0, True), TypeError, "length must be an int, got bool"),
    ((0, 0, 1.5), TypeError, "integer"),
])
def test_resident_refuses_bad_arguments(engine, args, error, match):
    with pytest.raises(error, match=match):
        engine.resident(*args)


@pytest.mark.skipif(not LINUX, reason="page-cache residency is probed with mincore on Linux")
@pytest.mark.parametrize("path", ["readinto", "read"])
def test_nowait_reads_no_cold_page_on_the_read_paths_either(engine, cold_file, path):
    import fastwrap
    fastwrap.disable(*(["sendfile"] if path == "readinto" else ["sendfile", "readinto"]))
    a, b = socket.socketpair()
    try:
        with a, b, open(cold_file, "rb", buffering=0) as f:
            a.setblocking(False)
            tx = engine.Transmission(f, a, nowait=True)
            assert tx.path == path
            with pytest.raises(BlockingIOError):
                tx.send()
            assert tx.waiting == (f.fileno(), "disk") and tx.sent == 0
            assert drive_fetching(tx, a, b)[0] == DATA
            assert f.tell() == len(DATA)
    finally:
        fastwrap.enable("sendfile", "readinto")


@pytest.mark.parametrize("path", ["sendfile", "readinto"])
def test_a_nowait_step_ends_after_a_window_so_the_loop_runs_between(engine, tmp_path, path):
    """A destination that never fills (a fast client) must not hold the loop for a whole file.

    A file destination never says EAGAIN, so only the step's own limit ends it.
    """
    import fastwrap
    from fastwrap import _plan
    src = tmp_path / "warm.bin"
    src.write_bytes(DATA)
    if path == "readinto":
        fastwrap.disable("sendfile")
    try:
        with open(src, "rb") as f, open(tmp_path / "out.bin", "wb") as out:
            tx = engine.Transmission(f, out, nowait=True)
            assert tx.path == path
            steps = []
            while not tx.done:
                steps.append(tx.send())
                assert tx.waiting is None
        assert (tmp_path / "out.bin").read_bytes() == DATA
        assert max(steps) <= _plan.RESIDENT_WINDOW
        assert len(steps) >= len(DATA) // _plan.RESIDENT_WINDOW
    finally:
        fastwrap.enable("sendfile")
