"""Headers go first, and a small response leaves as one TCP segment."""
from __future__ import annotations

import io
import os
import socket
import struct

import pytest

from _support import ALL_PATHS, LINUX, ReadOnly, drive, random_bytes

DATA = random_bytes(500_000, seed=70)
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"

# struct tcp_info (linux/tcp.h): eight __u8, twenty-four __u32 (tcpi_rto ..
# tcpi_total_retrans) = 104 bytes, then four __u64 (tcpi_pacing_rate,
# tcpi_max_pacing_rate, tcpi_bytes_acked, tcpi_bytes_received) = 136, then
# __u32 tcpi_segs_out, __u32 tcpi_segs_in, __u32 tcpi_notsent_bytes.
SEGS_OUT = 136
NOTSENT_BYTES = 144
TCP_INFO = getattr(socket, "TCP_INFO", None)
needs_tcp_info = pytest.mark.skipif(not LINUX or TCP_INFO is None,
                                    reason="struct tcp_info counters are Linux-only")


def tcp_counters(sock):
    info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 256)
    assert len(info) >= NOTSENT_BYTES + 4, "kernel older than 4.6: no tcpi_notsent_bytes"
    segs_out, = struct.unpack_from("=I", info, SEGS_OUT)
    notsent, = struct.unpack_from("=I", info, NOTSENT_BYTES)
    return segs_out, notsent


@pytest.mark.parametrize("path", ALL_PATHS)
def test_headers_arrive_before_the_body(engine, sources, link, path):
    source = sources.of_path(path, DATA)
    sent, received = link.exchange(
        lambda: engine.FileWrapper(source).transmit(link.dest, None, HEADERS))
    assert received == HEADERS + DATA
    assert sent == len(DATA)


@pytest.mark.parametrize("make", [bytearray, memoryview, lambda b: __import__("array").array(
    "B", b)], ids=["bytearray", "memoryview", "array"])
def test_headers_may_be_any_bytes_like(engine, link, make):
    sent, received = link.exchange(
        lambda: engine.transmit_file(b"body", link.dest, None, make(b"head\r\n\r\n")))
    assert received == b"head\r\n\r\nbody" and sent == 4


@pytest.mark.parametrize("headers", ["HTTP/1.1 200 OK\r\n\r\n", 42, object()],
                         ids=["str", "int", "object"])
def test_headers_that_are_not_bytes_are_a_type_error(engine, socketpair_link, headers):
    with pytest.raises(TypeError):
        engine.transmit_file(b"body", socketpair_link.dest, None, headers)
    socketpair_link.peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        socketpair_link.peer.recv(1)  # nothing went out


def test_large_headers_are_sent_whole(engine, sources, link):
    headers = b"X-Big: " + b"a" * 300_000 + b"\r\n\r\n"
    sent, received = link.exchange(
        lambda: engine.transmit_file(sources.file(DATA), link.dest, 1000, headers))
    assert received == headers + DATA[:1000] and sent == 1000


# -- one segment ------------------------------------------------------------------

SMALL = random_bytes(700, seed=71)


@needs_tcp_info
@pytest.mark.parametrize("path", ALL_PATHS)
def test_small_response_with_headers_leaves_as_one_segment(engine, sources, tcp_link, path):
    dest = tcp_link.dest
    dest.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    source = sources.of_path(path, SMALL)
    segs_before, _ = tcp_counters(dest)
    reader = tcp_link.reader(limit=len(HEADERS) + len(SMALL))
    sent = engine.FileWrapper(source).transmit(dest, None, HEADERS)
    assert reader.result() == HEADERS + SMALL and sent == len(SMALL)
    segs_after, notsent = tcp_counters(dest)
    assert notsent == 0
    # With TCP_NODELAY, headers sent on their own would be a segment of their own.
    assert segs_after - segs_before == 1


@needs_tcp_info
def test_uncoalesced_writes_would_be_two_segments(tcp_link):
    # The measurement itself can tell one segment from two.
    dest = tcp_link.dest
    dest.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    segs_before, _ = tcp_counters(dest)
    reader = tcp_link.reader(limit=len(HEADERS) + len(SMALL))
    dest.sendall(HEADERS)
    dest.sendall(SMALL)
    reader.result()
    assert tcp_counters(dest)[0] - segs_before == 2


def _empty_bodies(sources):
    return {
        "empty-file": lambda: (sources.file(b""), None),
        "empty-bytes": lambda: (b"", None),
        "count-0": lambda: (sources.file(DATA), 0),
        "empty-BytesIO-with-count": lambda: (io.BytesIO(b""), 10),
        "empty-read-only": lambda: (ReadOnly(b""), None),
        "empty-pipe": lambda: (sources.pipe(b""), None),
        "position-at-end": lambda: (sources.file(DATA), None),
    }


@needs_tcp_info
@pytest.mark.parametrize("nodelay", [1, 0], ids=["nodelay", "nagle"])
@pytest.mark.parametrize("kind", [
    "empty-file", "empty-bytes", "count-0", "empty-BytesIO-with-count", "empty-read-only",
    "empty-pipe", "position-at-end"])
def test_headers_with_empty_body_are_not_held_back(engine, sources, tcp_link, kind, nodelay):
    dest = tcp_link.dest
    dest.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, nodelay)
    source, count = _empty_bodies(sources)[kind]()
    if kind == "position-at-end":
        source.seek(0, 2)
    sent = engine.transmit_file(source, dest, count, HEADERS)
    # Right when transmit returns, nothing may sit corked in the send queue.
    segs_after, notsent = tcp_counters(dest)
    assert notsent == 0
    reader = tcp_link.reader(limit=len(HEADERS))
    assert reader.result() == HEADERS and sent == 0


@needs_tcp_info
def test_headers_are_pushed_when_the_file_turned_out_empty(engine, sources, tcp_link):
    # Headers went with MSG_MORE/cork expecting a body; the file was then
    # truncated: the headers must still leave at once.
    dest = tcp_link.dest
    dest.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = sources.file(DATA)
    tx = engine.Transmission(f, dest, None, HEADERS)
    os.truncate(f.name, 0)
    drive(tx, dest)
    assert tx.done and tx.sent == 0
    assert tcp_counters(dest)[1] == 0
    assert tcp_link.reader(limit=len(HEADERS)).result() == HEADERS
