"""Many threads at once: exact bytes, exact statistics, and a clear error for a shared transmission.

What the engines share between threads (the per-process statistics, the
disabled-path registry, the lazily looked-up system calls) must hold without
a GIL; what they do not share (a Transmission) refuses a second thread
instead of letting two drive one pipe, one buffer and one offset.  These
tests run on every interpreter; on a free-threaded build (3.14t) there is no
GIL to hide a race, and on the others the GIL is released around every
system call, where two threads do run at once.
"""
from __future__ import annotations

import io
import os
import random
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

import fastwrap

THREADS = 32
PER_THREAD = 100   # 3,200 transmissions per engine
BIGGEST = 48 * 1024  # every body fits the socket's buffer: no reader thread needed
SIZES = (0, 1, 4095, 4096, 12_345, BIGGEST)


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.fixture
def files(tmp_path: Path) -> dict:
    made = {}
    for size in SIZES:
        path = tmp_path / f"f{size}"
        path.write_bytes(pattern(size, size))
        made[size] = path
    return made


def test_thirty_two_threads_send_exact_bytes_and_the_statistics_add_up(engine, files) -> None:
    """3,200 transmissions by 32 threads on every path they can take: each
    body byte-exact, and the statistics equal, path by path, to the sum of
    what the transmissions themselves report."""
    totals_lock = threading.Lock()
    expected: dict = {}
    failures: list = []
    start = threading.Barrier(THREADS)

    def source_for(kind: int, size: int, stack: list):
        data = pattern(size, size)
        if kind == 0:    # a raw file: sendfile
            f = open(files[size], "rb", buffering=0)
        elif kind == 1:  # a buffered file in a FileWrapper: sendfile from tell()
            f = engine.FileWrapper(open(files[size], "rb"))
        elif kind == 2:  # bytes: sent from memory
            return data, data
        else:            # a file-like object with no descriptor: readinto/read
            f = io.BytesIO(data)
        stack.append(f)
        return f, data

    def worker(index: int) -> None:
        a, b = socket.socketpair()
        local: dict = {}
        rng = random.Random(index)
        try:
            start.wait()
            for i in range(PER_THREAD):
                size = rng.choice(SIZES)
                opened: list = []
                source, data = source_for((index + i) % 4, size, opened)
                tx = engine.Transmission(source, a)
                if i % 2:
                    tx.run()
                else:  # non-blocking steps until done (the buffer takes it all)
                    while not tx.done:
                        tx.send()
                got = recv_exactly(b, size) if size else b""
                for f in opened:
                    f.close()
                if got != data:
                    failures.append((index, i, tx.path, size, len(got)))
                count, sent = local.get(tx.path, (0, 0))
                local[tx.path] = (count + 1, sent + tx.sent)
        except BaseException as exc:  # reported below, with the thread's index
            failures.append((index, repr(exc)))
        finally:
            a.close()
            b.close()
        with totals_lock:
            for path, (count, sent) in local.items():
                c, s = expected.get(path, (0, 0))
                expected[path] = (c + count, s + sent)

    fastwrap.reset_stats()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert failures == []
    stats = fastwrap.stats()
    assert sum(count for count, _ in expected.values()) == THREADS * PER_THREAD
    assert len(expected) >= 3, expected  # sendfile, memory and a read loop at least
    for path, counts in stats.items():
        count, sent = expected.get(path, (0, 0))
        assert (counts["transmissions"], counts["bytes"], counts["fallbacks"]) == \
            (count, sent, 0), path


def test_statistics_count_every_record_from_many_threads() -> None:
    """The counters themselves: 32 threads recording at once lose nothing."""
    from fastwrap import _stats
    fastwrap.reset_stats()

    def record() -> None:
        for _ in range(2000):
            _stats.record("sendfile", 3)
            _stats.record_fallback("splice")

    threads = [threading.Thread(target=record) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = fastwrap.stats()
    assert stats["sendfile"]["transmissions"] == THREADS * 2000
    assert stats["sendfile"]["bytes"] == THREADS * 2000 * 3
    assert stats["splice"]["fallbacks"] == THREADS * 2000
    fastwrap.reset_stats()


def test_paths_switched_off_and_on_while_threads_send_keep_every_byte(engine, files) -> None:
    """fastwrap.disable()/enable() from one thread while eight send files."""
    stop = threading.Event()
    failures: list = []

    def toggle() -> None:
        while not stop.is_set():
            fastwrap.disable("sendfile")
            fastwrap.enable("sendfile")

    def send(index: int) -> None:
        a, b = socket.socketpair()
        try:
            for _ in range(60):
                with open(files[BIGGEST], "rb") as f:
                    engine.Transmission(f, a).run()
                if recv_exactly(b, BIGGEST) != pattern(BIGGEST, BIGGEST):
                    failures.append(index)
        except BaseException as exc:
            failures.append(repr(exc))
        finally:
            a.close()
            b.close()

    toggler = threading.Thread(target=toggle)
    senders = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    toggler.start()
    for t in senders:
        t.start()
    for t in senders:
        t.join(60)
    stop.set()
    toggler.join()
    assert failures == []


def test_a_transmission_refuses_a_second_thread_while_one_is_inside(engine) -> None:
    """run() waits in poll() for a reader; another thread's send() or close()
    meanwhile gets a one-line RuntimeError, and the transmission, untouched,
    then completes byte-exact."""
    data = pattern(8 * 1024 * 1024, 7)
    a, b = socket.socketpair()
    a.settimeout(30)
    tx = engine.Transmission(data, a)
    result: list = []
    runner = threading.Thread(target=lambda: result.append(tx.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while tx.sent == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the socket's buffer is full and run() waits
        time.sleep(0.05)
        assert tx.sent > 0 and not tx.done
        for call in (tx.send, tx.close, tx.fetch):
            with pytest.raises(RuntimeError, match="in use by another thread"):
                call()
        got = recv_exactly(b, len(data))
    finally:
        runner.join(30)
        a.close()
        b.close()
    assert result == [len(data)]
    assert got == data


def test_one_transmission_stepped_from_two_threads_sends_each_byte_once(engine) -> None:
    """Two threads racing send() on one transmission: every call either steps
    or is refused, and the reader gets the body exactly once."""
    data = pattern(4 * 1024 * 1024, 3)
    a, b = socket.socketpair()
    a.setblocking(False)
    tx = engine.Transmission(data, a)
    refused = [0, 0]
    errors: list = []

    def step(index: int) -> None:
        try:
            while not tx.done:
                try:
                    tx.send()
                except BlockingIOError:
                    time.sleep(0)
                except RuntimeError:
                    refused[index] += 1
        except BaseException as exc:
            errors.append(repr(exc))

    reader_data = bytearray()

    def read() -> None:
        while len(reader_data) < len(data):
            chunk = b.recv(1 << 20)
            if not chunk:
                break
            reader_data.extend(chunk)

    threads = [threading.Thread(target=step, args=(n,)) for n in range(2)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    reader.join(60)
    a.close()
    b.close()
    assert errors == []
    assert tx.sent == len(data)
    assert bytes(reader_data) == data


def test_a_wrapper_iterated_by_eight_threads_yields_each_block_once(engine) -> None:
    """A FileWrapper over bytes shared by eight iterating threads: its blocks
    are each taken once (its position changes under the wrapper's lock)."""
    blocks = [i.to_bytes(4, "big") * 256 for i in range(20_000)]  # 1 KiB each, all distinct
    wrapper = engine.FileWrapper(b"".join(blocks), 1024)
    taken: list = []

    def take() -> None:
        mine = list(wrapper)
        taken.extend(mine)  # list.extend is atomic in both builds

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(blocks)
    wrapper.close()


def test_a_wrapper_closed_while_other_threads_iterate_it_never_crashes(engine) -> None:
    data = b"x" * (4 * 1024 * 1024)
    for _ in range(20):
        wrapper = engine.FileWrapper(data, 512)
        errors: list = []

        def take() -> None:
            try:
                for _ in wrapper:
                    pass
            except ValueError as exc:  # closed under it: the one defined error
                if "closed" not in str(exc):
                    errors.append(repr(exc))

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        wrapper.close()
        for t in threads:
            t.join(30)
        assert errors == []
        assert wrapper.closed


def test_the_compiled_engine_keeps_the_gil_off_on_a_free_threaded_build() -> None:
    """Importing a module that is not declared free-threading compatible turns
    the GIL back on for the whole process: the compiled engine must not."""
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("this interpreter has a GIL (the check runs on 3.14t, in the wheel tests)")
    code = ("import sys, fastwrap._fastwrap, fastwrap; "
            "print(fastwrap.IMPLEMENTATION, sys._is_gil_enabled())")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}).stdout.split()
    assert out == ["cython", "False"]
