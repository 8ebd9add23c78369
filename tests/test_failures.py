"""Peers that vanish or stall, signals, threads, fallbacks: clean errors, no leaks."""
from __future__ import annotations

import os
import subprocess
import threading

import pytest

from _support import (ALL_PATHS, CTRL_C, LINUX, make_link, needs_linux, open_fds,
                      random_bytes, run_python)

BIG = random_bytes(16_000_000, seed=80)


def _big_source(sources, path):
    if path == "splice-chardev":
        return sources.opened("/dev/zero", "rb")
    return sources.of_path(path, BIG)


FAILURE_PATHS = ALL_PATHS + ("splice-chardev",)


@pytest.mark.parametrize("path", FAILURE_PATHS)
def test_peer_closing_mid_transfer_is_a_clean_os_error_without_fd_leak(
        engine, sources, link, path):
    if path == "splice-chardev" and not LINUX:
        pytest.skip("character-device splice is Linux-only")
    link.shrink_buffers()
    source = _big_source(sources, path)
    wrapper = engine.FileWrapper(source)
    fds_before = open_fds()

    def read_some_then_close():
        got = 0
        while got < 200_000:
            got += len(link.peer.recv(65536))
        link.peer.close()

    closer = threading.Thread(target=read_some_then_close)
    closer.start()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        wrapper.transmit(link.dest, 16_000_000)
    closer.join()
    assert open_fds() == fds_before - 1  # the peer socket the thread closed
    wrapper.close()
    wrapper.close()
    assert wrapper.closed


@pytest.mark.parametrize("path", ALL_PATHS)
def test_peer_already_closed_is_an_os_error(engine, sources, socketpair_link, path):
    socketpair_link.peer.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        engine.transmit_file(sources.of_path(path, BIG[:100_000]), socketpair_link.dest)


SIGPIPE_SCRIPT = """
import io, os, signal, socket, sys, threading
import {engine} as engine
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as an embedding C host may leave it
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(os.urandom(1 << 20))

def pipe():
    r, w = os.pipe()
    def feed():
        # Enough for several writes, so a TCP peer's RST is seen; this thread
        # blocks SIGPIPE itself, since it is not the code under test.
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGPIPE}})
        try:
            os.write(w, b"p" * (1 << 20))
        except OSError:
            pass
        finally:
            os.close(w)
    threading.Thread(target=feed).start()
    return open(r, "rb")

class ReadOnly:
    def __init__(self): self.b = io.BytesIO(b"r" * (1 << 20))
    def read(self, n=-1): return self.b.read(n)

makers = {{
    "sendfile": lambda: open(path, "rb"),
    "splice": pipe,
    "mmap": lambda: b"m" * (1 << 20),
    "readinto": lambda: io.BytesIO(b"i" * (1 << 20)),
    "read": ReadOnly,
}}
for kind in ("socketpair", "tcp"):
    for name, make in makers.items():
        if kind == "socketpair":
            a, b = socket.socketpair()
        else:
            srv = socket.create_server(("127.0.0.1", 0))
            b = socket.create_connection(srv.getsockname())
            a, _ = srv.accept()
            srv.close()
        b.close()
        source = make()
        try:
            engine.transmit_file(source, a)
            print(kind, name, "no error")
        except OSError as exc:
            print(kind, name, type(exc).__name__, flush=True)
        a.close()
print("alive")
"""


def test_sigpipe_at_default_does_not_kill_the_process(engine, tmp_path):
    proc = run_python(SIGPIPE_SCRIPT.format(engine=engine.__name__),
                      args=[str(tmp_path / "f.bin")])
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines[-1] == "alive"
    for line in lines[:-1]:
        kind, name, outcome = line.split()
        assert outcome in ("BrokenPipeError", "ConnectionResetError"), line
    assert len(lines) == 11


@pytest.mark.parametrize("path", ALL_PATHS)
def test_peer_that_stops_reading_times_out_while_other_threads_run(
        engine, sources, socketpair_link, path):
    socketpair_link.shrink_buffers()
    socketpair_link.dest.settimeout(0.5)
    source = sources.of_path(path, BIG)
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        start = counter[0]
        with pytest.raises(TimeoutError):
            engine.FileWrapper(source).transmit(socketpair_link.dest)
        during = counter[0] - start
    finally:
        stop.set()
        thread.join()
    assert during > 0  # the GIL was released while the engine waited


def test_many_threads_transmitting_at_once(engine, sources):
    data = random_bytes(1_000_000, seed=81)
    paths = ALL_PATHS * 3
    links = [make_link("socketpair" if i % 2 else "tcp") for i in range(len(paths))]
    source_list = [sources.of_path(p, data) for p in paths]
    results = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def work(i):
        start.wait()
        results[i] = links[i].exchange(
            lambda: engine.FileWrapper(source_list[i]).transmit(links[i].dest))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for made in links:
            made.close()
    for path, result in zip(paths, results):
        assert result == (len(data), data), path


@pytest.mark.slow
def test_thousands_of_transmissions_leak_no_descriptors(engine, sources, socketpair_link):
    data = random_bytes(5000, seed=82)
    f = sources.file(data)
    zero = sources.opened("/dev/zero", "rb") if LINUX else None
    total = [0]
    reader = socketpair_link.reader(sink=lambda view: None)
    dest = socketpair_link.dest
    fds_before = open_fds()
    expected = 0
    for i in range(3000):
        kind = i % 4
        if kind == 0:
            f.seek(0)
            expected += engine.FileWrapper(f).transmit(dest)
        elif kind == 1:
            expected += engine.transmit_file(data, dest, 1000)
        elif kind == 2 and zero is not None:
            expected += engine.transmit_file(zero, dest, 100)  # splice via a pipe
        else:
            tx = engine.Transmission(data, dest, 10, b"h")
            while not tx.done:
                total[0] += tx.send()
            expected += tx.sent + 1
    assert open_fds() == fds_before
    socketpair_link.finish()
    reader.result()
    assert reader.length == expected


@needs_linux
def test_sendfile_refused_before_the_first_byte_falls_back(engine, sources, tmp_path):
    # Linux sendfile(2) gives EINVAL for an O_APPEND destination.
    data = random_bytes(300_000, seed=83)
    f = sources.file(data)
    f.seek(7)
    out_path = tmp_path / "appended.bin"
    out_path.write_bytes(b"existing:")
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND)
    try:
        tx = engine.Transmission(f, fd, None, b"headers:")
        assert tx.path == "sendfile"
        while not tx.done:
            tx.send()
        assert tx.path == "readinto"
        assert tx.sent == len(data) - 7
    finally:
        os.close(fd)
    assert out_path.read_bytes() == b"existing:headers:" + data[7:]
    assert f.tell() == len(data)


@needs_linux
@pytest.mark.parametrize("buffering", [0, -1], ids=["raw-FileIO", "BufferedReader"])
def test_splice_refused_before_the_first_byte_falls_back(engine, sources, tmp_path, buffering):
    # Linux splice(2) gives EINVAL for an O_APPEND destination.  With a
    # BufferedReader the engine first sends what the reader's buffer holds;
    # those bytes came from the buffer, not from splice, so splice failing
    # afterwards must still fall back (readinto continues right after them).
    if "splice" not in engine.SUPPORTED_PATHS:
        pytest.skip("this engine has no splice on this Python")
    data = random_bytes(300_000, seed=84)
    out_path = tmp_path / "appended.bin"
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        sent = engine.FileWrapper(sources.pipe(data, buffering=buffering)).transmit(fd)
    finally:
        os.close(fd)
    assert sent == len(data)
    assert out_path.read_bytes() == data


CTRL_C_SCRIPT = """
import io, os, signal, socket, sys, threading, {engine} as engine
kind, path = sys.argv[1], sys.argv[2]
a, b = socket.socketpair()  # b never reads; a has no timeout
assert a.gettimeout() is None

def interrupt():
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})  # deliver to main
    threading.Event().wait(0.5)
    os.kill(os.getpid(), signal.SIGINT)

if kind == "sendfile":
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    source = open(path, "rb")
elif kind == "splice":
    r, w = os.pipe()
    def feed():
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})
        chunk = bytes(1 << 16)
        try:
            while True:
                os.write(w, chunk)
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()
    source = open(r, "rb")
elif kind == "mmap":
    source = bytes(256 << 20)
elif kind == "readinto":
    source = io.BytesIO(bytes(256 << 20))
else:
    class ReadOnly:
        def __init__(self): self.b = io.BytesIO(bytes(256 << 20))
        def read(self, n=-1): return self.b.read(n)
    source = ReadOnly()
threading.Thread(target=interrupt, daemon=True).start()
try:
    engine.transmit_file(source, a)
    print("finished without interruption")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


@pytest.mark.parametrize("path", ALL_PATHS)
def test_ctrl_c_interrupts_a_transmission_blocked_on_a_stalled_peer(engine, tmp_path, path):
    try:
        proc = run_python(CTRL_C + CTRL_C_SCRIPT.format(engine=engine.__name__),
                          args=[path, str(tmp_path / "big.bin")])
    except subprocess.TimeoutExpired:
        pytest.fail("SIGINT did not interrupt the transmission (killed after 60 s)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "KeyboardInterrupt"
