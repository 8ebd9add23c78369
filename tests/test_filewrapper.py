"""FileWrapper as PEP 3333 uses it: iteration, close, seek/tell, and bad input."""
from __future__ import annotations

import array
import io
import mmap
import os
import threading

import pytest

import fastwrap
from _support import ReadOnly, random_bytes

DATA = random_bytes(50_000 + 7, seed=1)


def _sources(sources):
    return {
        "BufferedReader": lambda: sources.file(DATA),
        "FileIO": lambda: sources.file(DATA, buffering=0),
        "BytesIO": lambda: io.BytesIO(DATA),
        "read-only": lambda: ReadOnly(DATA),
        "mmap": lambda: sources.mmap(DATA),
        "bytes": lambda: DATA,
        "bytearray": lambda: bytearray(DATA),
        "memoryview": lambda: memoryview(DATA),
    }


SOURCE_KINDS = ["BufferedReader", "FileIO", "BytesIO", "read-only", "mmap", "bytes",
                "bytearray", "memoryview"]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_iteration_yields_bytes_chunks_of_at_most_blksize_until_eof(engine, sources, kind):
    wrapper = engine.FileWrapper(_sources(sources)[kind](), 4096)
    chunks = list(wrapper)
    assert all(type(chunk) is bytes for chunk in chunks)
    assert all(0 < len(chunk) <= 4096 for chunk in chunks)
    assert b"".join(chunks) == DATA
    assert [len(c) for c in chunks[:-1]] == [4096] * (len(chunks) - 1)


def test_default_blksize_is_8192_and_attributes_are_kept(engine, sources):
    f = sources.file(DATA)
    wrapper = engine.FileWrapper(f)
    assert wrapper.blksize == 8192
    assert wrapper.filelike is f
    assert wrapper.closed is False
    assert len(next(iter(wrapper))) == 8192


def test_iteration_of_a_buffer_starts_at_the_wrappers_own_position(engine):
    wrapper = engine.FileWrapper(DATA, 1000)
    assert wrapper.seekable()
    assert wrapper.seek(12_345) == 12_345
    assert b"".join(wrapper) == DATA[12_345:]
    assert wrapper.tell() == len(DATA)


def test_iteration_of_a_file_starts_at_its_position(engine, sources):
    f = sources.file(DATA)
    f.read(10)
    assert b"".join(engine.FileWrapper(f, 777)) == DATA[10:]


def test_close_calls_filelike_close_exactly_once(engine):
    calls = []

    class Closeable(ReadOnly):
        def close(self):
            calls.append("close")

    wrapper = engine.FileWrapper(Closeable(DATA))
    wrapper.close()
    wrapper.close()
    assert calls == ["close"]
    assert wrapper.closed is True


def test_close_runs_the_close_patched_onto_the_file_after_wrapping(engine, sources):
    # Django sets file_to_stream.close = response.close after wrap time (#31240).
    f = sources.file(DATA)
    wrapper = engine.FileWrapper(f)
    calls = []
    original = f.close

    def patched():
        calls.append("patched")
        original()

    f.close = patched
    wrapper.close()
    wrapper.close()
    assert calls == ["patched"]
    assert f.closed


def test_close_works_for_objects_without_close(engine):
    for obj in (DATA, bytearray(DATA), memoryview(DATA)):
        wrapper = engine.FileWrapper(obj)
        wrapper.close()
        wrapper.close()
        assert wrapper.closed is True


def test_context_manager_closes_the_file(engine, sources):
    f = sources.file(DATA)
    with engine.FileWrapper(f) as wrapper:
        assert next(iter(wrapper)) == DATA[:8192]
    assert wrapper.closed and f.closed


def test_iterating_a_closed_wrapper_raises_value_error(engine, sources):
    wrapper = engine.FileWrapper(sources.file(DATA))
    wrapper.close()
    with pytest.raises(ValueError):
        next(iter(wrapper))


def test_transmit_after_close_raises_value_error(engine, sources, socketpair_link):
    wrapper = engine.FileWrapper(sources.file(DATA))
    wrapper.close()
    with pytest.raises(ValueError):
        wrapper.transmit(socketpair_link.dest)


def test_seek_tell_seekable_pass_through_to_the_file(engine, sources):
    f = sources.file(DATA)
    wrapper = engine.FileWrapper(f)
    assert wrapper.seekable() is True
    assert wrapper.seek(1000) == 1000
    assert f.tell() == 1000 and wrapper.tell() == 1000
    f.seek(2000)
    assert wrapper.tell() == 2000
    assert wrapper.seek(-10, os.SEEK_END) == len(DATA) - 10
    assert wrapper.seek(5, os.SEEK_CUR) == len(DATA) - 5
    assert b"".join(wrapper) == DATA[-5:]


def test_seekable_is_false_for_a_pipe(engine, sources):
    wrapper = engine.FileWrapper(sources.pipe(b"abc"))
    assert wrapper.seekable() is False


def test_buffers_keep_their_own_position(engine):
    wrapper = engine.FileWrapper(bytearray(DATA))
    assert wrapper.tell() == 0
    assert wrapper.seek(-100, os.SEEK_END) == len(DATA) - 100
    assert wrapper.seek(50, os.SEEK_CUR) == len(DATA) - 50
    assert b"".join(wrapper) == DATA[-50:]
    with pytest.raises(ValueError):
        wrapper.seek(-1)


def test_mmap_is_iterated_from_its_position(engine, sources):
    m = sources.mmap(DATA)
    m.seek(3000)
    wrapper = engine.FileWrapper(m, 5000)
    assert wrapper.tell() == 3000
    assert b"".join(wrapper) == DATA[3000:]


# -- bad input -------------------------------------------------------------------

def test_none_is_rejected_with_type_error(engine):
    with pytest.raises(TypeError):
        engine.FileWrapper(None)


@pytest.mark.parametrize("make", [
    lambda path: open(path, "r"),
    lambda path: open(path, "r", encoding="latin-1"),
    lambda path: io.StringIO("text"),
], ids=["open-r", "open-r-latin1", "StringIO"])
def test_text_mode_file_is_rejected_naming_text_mode(engine, tmp_path, make):
    path = tmp_path / "t.txt"
    path.write_text("hello")
    f = make(path)
    try:
        with pytest.raises(TypeError, match="(?i)text"):
            engine.FileWrapper(f)
    finally:
        f.close()


def test_closed_file_is_rejected_with_value_error(engine, sources):
    f = sources.file(DATA)
    f.close()
    with pytest.raises(ValueError):
        engine.FileWrapper(f)


@pytest.mark.parametrize("blksize", [0, -1, -8192])
def test_non_positive_blksize_is_rejected(engine, blksize):
    with pytest.raises(ValueError):
        engine.FileWrapper(DATA, blksize)


@pytest.mark.parametrize("blksize", ["8192", 8192.0, None])
def test_non_integer_blksize_is_a_type_error(engine, blksize):
    with pytest.raises(TypeError):
        engine.FileWrapper(DATA, blksize)


@pytest.mark.parametrize("obj", [object(), 42, 3.5, ["a", "list"], "a str"],
                         ids=["object", "int", "float", "list", "str"])
def test_object_neither_file_nor_buffer_is_a_type_error(engine, obj):
    with pytest.raises(TypeError):
        engine.FileWrapper(obj)


@pytest.mark.parametrize("count", [-1, -4096])
def test_negative_count_is_a_value_error(engine, sources, socketpair_link, count):
    with pytest.raises(ValueError):
        engine.FileWrapper(sources.file(DATA)).transmit(socketpair_link.dest, count)
    with pytest.raises(ValueError):
        engine.Transmission(DATA, socketpair_link.dest, count)


@pytest.mark.parametrize("count", ["10", 1.5, True])
def test_non_integer_count_is_a_type_error(engine, socketpair_link, count):
    with pytest.raises(TypeError):
        engine.transmit_file(DATA, socketpair_link.dest, count)


def test_write_only_file_is_refused_before_any_byte(engine, tmp_path, socketpair_link):
    with open(tmp_path / "w.bin", "wb") as f:
        wrapper = engine.FileWrapper(f)
        with pytest.raises((OSError, ValueError)):  # io.UnsupportedOperation
            wrapper.transmit(socketpair_link.dest)
    socketpair_link.peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        socketpair_link.peer.recv(1)


def test_closed_socket_dest_is_refused(engine, sources, socketpair_link):
    socketpair_link.dest.close()
    with pytest.raises((OSError, ValueError)):
        engine.FileWrapper(sources.file(DATA)).transmit(socketpair_link.dest)


@pytest.mark.parametrize("dest", [None, "socket", 3.0, -1], ids=["None", "str", "float", "fd-1"])
def test_dest_that_is_not_a_descriptor_is_refused(engine, dest):
    with pytest.raises((TypeError, ValueError)):
        engine.transmit_file(DATA, dest)


# -- a non-blocking raw pipe whose read() returns None -------------------------------

def _slow_pipe(data, pieces=20):
    """A non-blocking raw FileIO over a pipe that a thread fills bit by bit."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    raw = open(r, "rb", buffering=0)
    assert isinstance(raw, io.FileIO)
    step = -(-len(data) // pieces)
    go = threading.Event()

    def feed():
        go.wait()
        try:
            for start in range(0, len(data), step):
                os.write(w, data[start:start + step])
                threading.Event().wait(0.003)
        except OSError:
            pass  # the reading side gave up: the test reports that
        finally:
            os.close(w)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return raw, thread, go


def test_iterating_a_non_blocking_raw_pipe_waits_when_read_returns_none(engine):
    data = random_bytes(20_000, seed=2)
    raw, thread, go = _slow_pipe(data)
    try:
        assert raw.read(10) is None  # nothing written yet: the case under test
        go.set()
        chunks = list(engine.FileWrapper(raw, 1024))
    finally:
        raw.close()
        thread.join()
    assert b"".join(chunks) == data
    assert all(type(c) is bytes and 0 < len(c) <= 1024 for c in chunks)


@pytest.mark.parametrize("disabled", [(), ("splice",)], ids=["default-path", "readinto"])
def test_transmitting_a_non_blocking_raw_pipe_sends_every_byte(engine, link, disabled):
    if disabled:
        fastwrap.disable(*disabled)
    data = random_bytes(20_000, seed=3)
    raw, thread, go = _slow_pipe(data)
    try:
        assert raw.read(10) is None
        go.set()
        sent, received = link.exchange(lambda: engine.FileWrapper(raw).transmit(link.dest))
    finally:
        raw.close()
        thread.join()
    assert received == data
    assert sent == len(data)


def test_read_returning_str_is_a_type_error_not_a_silent_send(engine, socketpair_link):
    class Texty:
        def read(self, size=-1):
            return "text"

    with pytest.raises(TypeError):
        list(engine.FileWrapper(Texty()))
    with pytest.raises(TypeError):
        engine.FileWrapper(Texty()).transmit(socketpair_link.dest)


def test_array_is_iterated_as_its_bytes(engine):
    numbers = array.array("i", range(1000))
    assert b"".join(engine.FileWrapper(numbers, 100)) == numbers.tobytes()


def test_mmap_of_whole_file_can_be_wrapped_after_close_of_file(engine, tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(DATA)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert b"".join(engine.FileWrapper(m)) == DATA
    finally:
        m.close()
