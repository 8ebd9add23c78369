"""Regression tests for bugs found in review; each fails before its fix.

Every test runs against both engines (the ``engine`` fixture).
"""
from __future__ import annotations

import io
import mmap
import os
import socket
import threading
import time

import pytest

import fastwrap

from _support import needs_linux, random_bytes, run_python

DATA = random_bytes(300_000, seed=7)


# 1. _plan.Plan.fallback / both engines' _splice: bytes already moved into the
#    intermediate pipe are dropped when the pipe -> dest splice is refused.
@needs_linux
def test_fallback_after_intermediate_pipe_refill_loses_no_bytes(engine, tmp_path):
    if "splice" not in engine.SUPPORTED_PATHS:
        pytest.skip("no splice in this engine")
    feeder, s2 = socket.socketpair()
    src = open(os.dup(s2.fileno()), "rb", buffering=0)  # a socket: not a pipe
    s2.close()
    t = threading.Thread(target=lambda: (feeder.sendall(DATA), feeder.close()), daemon=True)
    t.start()
    out = tmp_path / "out.bin"
    try:
        with open(out, "ab") as dest:  # O_APPEND: splice(2) into it is EINVAL
            tx = engine.Transmission(src, dest)
            assert tx.path == "splice"
            while not tx.done:
                tx.send()
    finally:
        t.join(10)
        src.close()
    assert tx.sent == len(DATA)
    assert out.read_bytes() == DATA


# 2. Both engines' _splice drain: peek() on a non-blocking pipe with nothing yet
#    returns b"", which is taken for EOF: an empty body, silently.
@needs_linux
def test_buffered_non_blocking_pipe_with_no_data_yet_is_not_an_empty_body(
        engine, socketpair_link):
    r, w = os.pipe()
    os.set_blocking(r, False)
    src = open(r, "rb")  # a BufferedReader: the splice path drains it first

    def feed() -> None:
        time.sleep(0.2)
        try:
            os.write(w, DATA[:1000])
        except OSError:
            pass  # the bug: the transmission already ended and closed the pipe
        finally:
            os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    try:
        sent, received = socketpair_link.exchange(
            lambda: engine.FileWrapper(src).transmit(socketpair_link.dest))
    finally:
        src.close()
    assert sent == 1000 and received == DATA[:1000]


# 3. Both engines' _splice: EAGAIN from a non-blocking *source* pipe is waited
#    out as if the dest were full: poll(dest, POLLOUT) returns at once -> busy loop.
@needs_linux
def test_splice_from_a_stalled_non_blocking_pipe_does_not_spin(engine, socketpair_link):
    r, w = os.pipe()
    os.set_blocking(r, False)
    src = open(r, "rb", buffering=0)

    def feed() -> None:
        for _ in range(10):
            time.sleep(0.1)
            os.write(w, b"x" * 100)
        os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        sent, received = socketpair_link.exchange(
            lambda: engine.FileWrapper(src).transmit(socketpair_link.dest))
    finally:
        src.close()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert received == b"x" * 1000 and sent == 1000
    assert cpu < 0.5 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s: busy-waiting"


# 4. _fastwrap.Transmission._splice: with the length unknown every splice has
#    SPLICE_F_MORE, the last one too, and nothing un-corks it: the end of the
#    body waits ~200 ms in the kernel on TCP.
@needs_linux
def test_splice_tail_is_not_held_back_by_splice_f_more(engine, tcp_link):
    latencies = []
    for _ in range(3):
        r, w = os.pipe()
        os.write(w, b"y" * 5000)
        os.close(w)
        with open(r, "rb", buffering=0) as src:
            t0 = time.monotonic()
            sent = engine.FileWrapper(src).transmit(tcp_link.dest)
            got = 0
            tcp_link.peer.settimeout(5)
            while got < sent:
                got += len(tcp_link.peer.recv(65536))
            latencies.append(time.monotonic() - t0)
    assert sent == 5000
    assert min(latencies) < 0.1, f"the last bytes were held back: {latencies}"


# 5. _plan.fill: a read(n) that returns more than n (urllib3 with
#    decode_content, custom streams) has the excess silently dropped by
#    transmit(), while iterating the same object yields every byte.
class _Inflating:
    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n if n < 0 else 2 * n)


def test_read_returning_more_than_asked_is_not_silently_truncated(engine, socketpair_link):
    iterated = b"".join(engine.FileWrapper(_Inflating(DATA)))
    assert iterated == DATA
    sent, received = socketpair_link.exchange(
        lambda: engine.FileWrapper(_Inflating(DATA)).transmit(socketpair_link.dest))
    assert received == DATA and sent == len(DATA)


# 6. _purepy._SigpipeGuard: trusts signal.getsignal(), which does not see a
#    SIGPIPE disposition set by C code after start-up; os.write() to a closed
#    socket then kills the process (the compiled engine asks sigaction()).
SIGPIPE_BEHIND_PYTHONS_BACK = """
import ctypes, signal, socket, {engine} as engine
libc = ctypes.CDLL(None)
libc.signal.restype = ctypes.c_void_p
libc.signal(signal.SIGPIPE, ctypes.c_void_p(0))  # SIG_DFL, as a C host may set it
a, b = socket.socketpair()
b.close()
try:
    engine.transmit_file(b"m" * (1 << 20), a)
except OSError as exc:
    print(type(exc).__name__)
print("alive")
"""


@needs_linux
def test_sigpipe_reset_by_c_code_does_not_kill_the_process(engine):
    proc = run_python(SIGPIPE_BEHIND_PYTHONS_BACK.format(engine=engine.__name__))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.split() == ["BrokenPipeError", "alive"]


# 7. _fastwrap.Transmission._step: when splice falls back after draining the
#    buffered reader, the drained bytes are missing from send()'s return value
#    (the pure engine counts them).
@needs_linux
def test_send_reports_drained_bytes_when_splice_falls_back(engine, tmp_path):
    if "splice" not in engine.SUPPORTED_PATHS:
        pytest.skip("no splice in this engine")
    r, w = os.pipe()
    os.write(w, DATA[:10_000])
    os.close(w)
    out = tmp_path / "out.bin"
    with open(r, "rb") as src, open(out, "ab") as dest:
        src.read(10)  # the reader's buffer now holds bytes the pipe no longer has
        tx = engine.Transmission(src, dest)
        total = 0
        while not tx.done:
            total += tx.send()
    assert out.read_bytes() == DATA[10:10_000]
    assert tx.sent == 9_990
    assert total == tx.sent


# 8. Twins disagree on counts that do not fit an int64: the compiled engine
#    raises OverflowError, the pure one sends the body.
def test_count_beyond_int64_means_no_limit_in_both_engines(engine, socketpair_link):
    sent, received = socketpair_link.exchange(
        lambda: engine.FileWrapper(io.BytesIO(b"abc")).transmit(
            socketpair_link.dest, count=2 ** 64))
    assert sent == 3 and received == b"abc"


# 9. _fastwrap.FileWrapper.tell/seek/seekable after close() on a bytes-like
#    filelike: AttributeError ('bytes' object has no attribute 'tell') and
#    seekable() False, where the pure twin answers from its own position.
def test_closed_memory_wrapper_position_methods_agree(engine):
    # Like a closed io file: every position method says it is closed.
    w = engine.FileWrapper(b"abcdef")
    w.seek(2)
    w.close()
    for call in (w.seekable, w.tell, lambda: w.seek(0)):
        with pytest.raises(ValueError, match="closed"):
            call()


# 10. _plan.Plan for an mmap off the mmap path: _unread() needs seekable(),
#     which mmap only has from 3.13, so the position is left after bytes that
#     were read but never sent.
def test_mmap_position_after_a_stopped_read_loop(engine, tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(os.urandom(4 << 20))
    fastwrap.disable("mmap")
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            tx = engine.Transmission(m, a)
            assert tx.path in ("read", "readinto")
            with pytest.raises(BlockingIOError):
                for _ in range(10_000):
                    tx.send()
            tx.close()
            assert m.tell() == tx.sent
    finally:
        a.close()
        b.close()


# 11. _plan.Plan.chunk = max(blksize, ...): a large blksize, harmless when
#     iterating, makes transmit() allocate it at once (MemoryError).
def test_large_blksize_does_not_allocate_it_in_transmit(engine, socketpair_link):
    big = 1 << 42
    assert list(engine.FileWrapper(io.BytesIO(b"abc"), blksize=big)) == [b"abc"]
    sent, received = socketpair_link.exchange(
        lambda: engine.FileWrapper(io.BytesIO(b"abc"), blksize=big).transmit(
            socketpair_link.dest))
    assert sent == 3 and received == b"abc"
