"""Where a transmission starts, and where it leaves the source."""
from __future__ import annotations

import io
import os

import pytest

import fastwrap
from _support import ReadOnly, drive, random_bytes

DATA = random_bytes(200_000 + 13, seed=20)

# A regular file goes by sendfile, or by readinto when sendfile is off: the
# position rules must hold on both.
FILE_PATHS = pytest.mark.parametrize("disabled", [(), ("sendfile",)],
                                     ids=["sendfile", "readinto"])


def _disable(disabled):
    if disabled:
        fastwrap.disable(*disabled)


@FILE_PATHS
def test_starts_at_logical_position_after_buffered_read(engine, sources, link, disabled):
    _disable(disabled)
    f = sources.file(DATA)
    f.read(10)
    # The raw descriptor is a whole buffer ahead: starting there would be wrong.
    assert f.tell() == 10 and os.lseek(f.fileno(), 0, os.SEEK_CUR) != 10
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest))
    assert received == DATA[10:]
    assert sent == len(DATA) - 10
    assert f.tell() == len(DATA)


@FILE_PATHS
def test_starts_at_logical_position_after_seek_inside_the_buffer(
        engine, sources, link, disabled):
    _disable(disabled)
    f = sources.file(DATA)
    f.read(100)
    f.seek(37)  # inside the read buffer: the fd stays where the buffer ends
    assert os.lseek(f.fileno(), 0, os.SEEK_CUR) != 37
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest))
    assert received == DATA[37:]
    assert f.tell() == len(DATA)


@FILE_PATHS
def test_position_after_partial_count_is_start_plus_sent(engine, sources, link, disabled):
    _disable(disabled)
    f = sources.file(DATA)
    f.read(10)
    wrapper = engine.FileWrapper(f)

    def send():
        first = wrapper.transmit(link.dest, 1000)
        after_first = f.tell()
        second = wrapper.transmit(link.dest, 5000)
        return first, after_first, second

    (first, after_first, second), received = link.exchange(send)
    assert (first, after_first, second) == (1000, 1010, 5000)
    assert f.tell() == 6010
    assert received == DATA[10:6010]
    assert f.read(5) == DATA[6010:6015]  # the buffered reader agrees


@FILE_PATHS
def test_unflushed_writes_of_a_buffered_random_are_sent(engine, sources, link, disabled):
    _disable(disabled)
    f = sources.file(DATA, "r+b")
    f.read(100)
    f.write(b"P" * 50)  # held in the BufferedRandom's buffer...
    f.seek(100)         # ...which a seek inside the buffer does not flush
    assert os.pread(f.fileno(), 50, 100) == DATA[100:150]
    sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest))
    assert received == b"P" * 50 + DATA[150:]
    assert sent == len(DATA) - 100
    assert f.tell() == len(DATA)


def test_pipe_partly_read_through_buffered_reader_sends_buffer_then_rest(
        engine, sources, link):
    pipe = sources.pipe(DATA)
    head = pipe.read(100)
    assert head == DATA[:100]
    assert len(pipe.peek()) > 0  # the reader holds bytes the pipe no longer has
    sent, received = link.exchange(lambda: engine.FileWrapper(pipe).transmit(link.dest))
    assert received == DATA[100:]
    assert sent == len(DATA) - 100


def test_pipe_partly_read_with_count_inside_the_buffer(engine, sources, link):
    pipe = sources.pipe(DATA)
    pipe.read(100)
    held = len(pipe.peek())
    assert held > 10

    def send():
        first = engine.FileWrapper(pipe).transmit(link.dest, 10)
        second = engine.FileWrapper(pipe).transmit(link.dest, held)
        return first, second

    (first, second), received = link.exchange(send)
    assert (first, second) == (10, held)
    assert received == DATA[100:110 + held]
    assert pipe.read(10) == DATA[110 + held:120 + held]


def test_mmap_starts_at_its_own_position_and_is_left_after_the_last_byte(
        engine, sources, link):
    m = sources.mmap(DATA)
    m.seek(1234)

    def send():
        first = engine.FileWrapper(m).transmit(link.dest, 4000)
        after = m.tell()
        return first, after, engine.transmit_file(m, link.dest)

    (first, after, rest), received = link.exchange(send)
    assert (first, after) == (4000, 5234)
    assert rest == len(DATA) - 5234
    assert m.tell() == len(DATA)
    assert received == DATA[1234:]


def test_mmap_position_with_mmap_path_disabled(engine, sources, link):
    fastwrap.disable("mmap")
    m = sources.mmap(DATA)
    m.seek(99)
    sent, received = link.exchange(lambda: engine.transmit_file(m, link.dest, 1000))
    assert sent == 1000 and received == DATA[99:1099]
    assert m.tell() == 1099


def test_bytes_always_start_at_zero(engine, link):
    def send():
        return engine.transmit_file(DATA, link.dest, 10), engine.transmit_file(DATA, link.dest, 10)

    sent, received = link.exchange(send)
    assert sent == (10, 10)
    assert received == DATA[:10] * 2


@pytest.mark.parametrize("disabled", [(), ("mmap",)], ids=["mmap", "read"])
def test_buffer_wrapper_starts_at_its_position_and_advances(engine, link, disabled):
    _disable(disabled)
    wrapper = engine.FileWrapper(bytearray(DATA))
    wrapper.seek(500)

    def send():
        first = wrapper.transmit(link.dest, 100)
        after = wrapper.tell()
        second = wrapper.transmit(link.dest)
        return first, after, second

    (first, after, second), received = link.exchange(send)
    assert (first, after) == (100, 600)
    assert second == len(DATA) - 600
    assert wrapper.tell() == len(DATA)
    assert received == DATA[500:]


def test_bytesio_starts_at_tell_and_ends_after_last_byte_sent(engine, link):
    source = io.BytesIO(DATA)
    source.seek(777)
    sent, received = link.exchange(lambda: engine.transmit_file(source, link.dest, 3333))
    assert sent == 3333 and received == DATA[777:4110]
    assert source.tell() == 4110


def test_read_only_object_is_read_no_further_than_count(engine, link):
    source = ReadOnly(DATA)
    sent, received = link.exchange(lambda: engine.transmit_file(source, link.dest, 3333))
    assert sent == 3333 and received == DATA[:3333]
    assert source.read(5) == DATA[3333:3338]


def test_range_served_by_seeking_the_wrapper(engine, sources, link):
    # What werkzeug does for a 206: seek through the wrapper, send a count.
    f = sources.file(DATA)
    wrapper = engine.FileWrapper(f)
    wrapper.seek(150_000)
    sent, received = link.exchange(lambda: wrapper.transmit(link.dest, 20_000))
    assert sent == 20_000 and received == DATA[150_000:170_000]
    assert wrapper.tell() == f.tell() == 170_000


def test_transmission_closed_early_leaves_file_after_last_byte_sent(
        engine, sources, socketpair_link):
    f = sources.file(random_bytes(8_000_000, seed=21))
    f.seek(5)
    dest = socketpair_link.dest
    dest.setblocking(False)
    tx = engine.Transmission(f, dest)
    with pytest.raises(BlockingIOError):
        while True:
            tx.send()
    assert 0 < tx.sent < 8_000_000 - 5
    tx.close()
    assert tx.done
    assert f.tell() == 5 + tx.sent


def test_position_is_left_after_the_last_byte_when_peer_reads_part(
        engine, sources, socketpair_link):
    f = sources.file(DATA)
    tx = engine.Transmission(f, socketpair_link.dest)
    moved, received = socketpair_link.exchange(lambda: drive(tx, socketpair_link.dest))
    assert received == DATA and f.tell() == len(DATA)
