"""fastwrap's transmit(): any WSGI response iterable, the fast way when it can."""
from __future__ import annotations

import array
import io
import wsgiref.util

import pytest

from _support import random_bytes

DATA = random_bytes(400_000, seed=90)


class SpyReader(io.BufferedReader):
    """A binary file that counts read() calls: iterating a wrapper calls read()."""

    reads = 0

    def read(self, size=-1):
        SpyReader.reads += 1
        return super().read(size)


@pytest.fixture
def spy(sources):
    SpyReader.reads = 0
    f = SpyReader(io.FileIO(sources.path(DATA), "rb"))
    yield f
    f.close()


def test_list_body_is_sent_in_order(engine, link):
    body = [b"ab", bytearray(b"cd"), memoryview(b"ef"), b"", DATA]
    sent, received = link.exchange(lambda: engine.transmit(link.dest, body))
    assert received == b"abcdef" + DATA and sent == 6 + len(DATA)


def test_generator_body_is_sent_in_order(engine, link):
    def body():
        yield b"first,"
        yield b""
        yield DATA

    sent, received = link.exchange(lambda: engine.transmit(link.dest, body()))
    assert received == b"first," + DATA and sent == 6 + len(DATA)


@pytest.mark.parametrize("count", [0, 3, 6, 7, 100, 10_000])
def test_count_caps_an_iterable_body(engine, link, count):
    body = [b"abc", b"def", DATA]
    full = b"abcdef" + DATA
    sent, received = link.exchange(lambda: engine.transmit(link.dest, body, count))
    assert received == full[:count] and sent == count


def test_count_stops_pulling_from_the_iterable(engine, link):
    def body():
        yield b"12345"
        yield b"67890"
        raise AssertionError("pulled a chunk past count")

    sent, received = link.exchange(lambda: engine.transmit(link.dest, body(), 10))
    assert sent == 10 and received == b"1234567890"


def test_count_applies_to_bytes_not_items_of_a_wide_buffer(engine, link):
    chunk = array.array("i", range(100))  # 400 bytes, 100 items
    sent, received = link.exchange(lambda: engine.transmit(link.dest, [chunk], 8))
    assert sent == 8 and received == chunk.tobytes()[:8]


def test_headers_go_first_and_an_empty_body_still_sends_them(engine, link):
    def send():
        return (engine.transmit(link.dest, [b"body"], None, b"H1:"),
                engine.transmit(link.dest, [], None, b"H2:"),
                engine.transmit(link.dest, [b""], None, b"H3:"),
                engine.transmit(link.dest, [b"x"], 0, b"H4:"))

    sent, received = link.exchange(send)
    assert sent == (4, 0, 0, 0)
    assert received == b"H1:bodyH2:H3:H4:"


def test_str_chunk_is_a_clear_type_error(engine, socketpair_link):
    with pytest.raises(TypeError, match="str"):
        engine.transmit(socketpair_link.dest, [b"ok", "text"])


def test_transmit_does_not_close_the_result(engine, link):
    class Body(list):
        closed = False

        def close(self):
            self.closed = True

    body = Body([b"abc"])
    sent, received = link.exchange(lambda: engine.transmit(link.dest, body))
    assert received == b"abc" and not body.closed


def test_fastwrap_filewrapper_takes_the_fast_path_without_iterating(engine, link, spy):
    spy.read(10)  # the position the fast path must start from
    SpyReader.reads = 0
    wrapper = engine.FileWrapper(spy)
    sent, received = link.exchange(lambda: engine.transmit(link.dest, wrapper, None, b"H:"))
    assert received == b"H:" + DATA[10:] and sent == len(DATA) - 10
    assert SpyReader.reads == 0  # iterating would have called read(blksize)


def test_fastwrap_filewrapper_with_count(engine, sources, link):
    wrapper = engine.FileWrapper(sources.file(DATA))
    sent, received = link.exchange(lambda: engine.transmit(link.dest, wrapper, 12_345))
    assert sent == 12_345 and received == DATA[:12_345]
    assert wrapper.tell() == 12_345


def test_wsgiref_filewrapper_around_binary_file_takes_the_fast_path(engine, link, spy):
    wrapper = wsgiref.util.FileWrapper(spy, 1)  # blksize 1: iterating would be 400k reads
    assert engine.select_path(wrapper, link.dest) in ("readinto", "sendfile")
    sent, received = link.exchange(lambda: engine.transmit(link.dest, wrapper, 300_000))
    assert received == DATA[:300_000] and sent == 300_000
    assert SpyReader.reads == 0


def test_wsgiref_filewrapper_around_plain_file_selects_sendfile(engine, sources, link):
    wrapper = wsgiref.util.FileWrapper(sources.file(DATA))
    assert engine.select_path(wrapper, link.dest) == "sendfile"
    sent, received = link.exchange(lambda: engine.transmit(link.dest, wrapper))
    assert received == DATA and sent == len(DATA)


def test_wsgiref_filewrapper_around_stringio_raises_clearly(engine, socketpair_link):
    wrapper = wsgiref.util.FileWrapper(io.StringIO("text body"))
    with pytest.raises(TypeError, match="str"):
        engine.transmit(socketpair_link.dest, wrapper)


def test_wsgiref_filewrapper_around_bytesio_is_sent(engine, link):
    wrapper = wsgiref.util.FileWrapper(io.BytesIO(DATA), 7)
    sent, received = link.exchange(lambda: engine.transmit(link.dest, wrapper))
    assert received == DATA and sent == len(DATA)


def test_transmit_refuses_negative_count(engine, socketpair_link):
    with pytest.raises(ValueError):
        engine.transmit(socketpair_link.dest, [b"x"], -1)
