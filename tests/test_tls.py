"""TLS on 127.0.0.1: no kernel path ever writes plaintext onto an ssl.SSLSocket."""
from __future__ import annotations

import io

import pytest

import fastwrap
from _support import ReadOnly, drive, random_bytes, send_until_blocked

DATA = random_bytes(3_000_000 + 5, seed=50)


def _source(kind, sources):
    return {
        "file": lambda: sources.file(DATA),
        "bytes": lambda: DATA,
        "mmap": lambda: sources.mmap(DATA),
        "BytesIO": lambda: io.BytesIO(DATA),
        "read-only": lambda: ReadOnly(DATA),
        "pipe": lambda: sources.pipe(DATA),
    }[kind]()


TLS_PATHS = {"file": "readinto", "bytes": "mmap", "mmap": "mmap", "BytesIO": "readinto",
             "read-only": "read", "pipe": "readinto"}


@pytest.mark.parametrize("kind", list(TLS_PATHS))
def test_every_source_is_sent_byte_exact_over_tls(engine, sources, tls_link, kind):
    tx = engine.Transmission(_source(kind, sources), tls_link.dest)
    assert tx.path == TLS_PATHS[kind]
    moved, received = tls_link.exchange(lambda: drive(tx, tls_link.dest))
    assert received == DATA
    assert tx.sent == moved == len(DATA)


@pytest.mark.parametrize("kind", ["file", "bytes", "pipe"])
def test_filewrapper_transmit_over_tls_with_count_and_headers(engine, sources, tls_link, kind):
    headers = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    source = _source(kind, sources)
    wrapper = engine.FileWrapper(source)
    sent, received = tls_link.exchange(
        lambda: wrapper.transmit(tls_link.dest, 1_000_000, headers))
    assert sent == 1_000_000
    assert received == headers + DATA[:1_000_000]


def test_file_over_tls_starts_at_tell_and_leaves_position_after(engine, sources, tls_link):
    f = sources.file(DATA)
    f.read(10)
    sent, received = tls_link.exchange(
        lambda: engine.FileWrapper(f).transmit(tls_link.dest, 500_000))
    assert sent == 500_000 and received == DATA[10:500_010]
    assert f.tell() == 500_010


def test_tls_with_a_socket_timeout(engine, sources, tls_link):
    tls_link.dest.settimeout(60)
    f = sources.file(DATA)
    sent, received = tls_link.exchange(lambda: engine.FileWrapper(f).transmit(tls_link.dest))
    assert sent == len(DATA) and received == DATA


@pytest.mark.parametrize("kind", ["file", "bytes", "BytesIO"])
def test_non_blocking_tls_transmission_with_slow_reader(engine, sources, tls_link, kind):
    tls_link.shrink_buffers()
    tls_link.dest.setblocking(False)
    tx = engine.Transmission(_source(kind, sources), tls_link.dest, headers=b"HEAD\r\n")
    # The peer is not reading yet.  A TLS record that did not fit is retried
    # with the same bytes later (OpenSSL requires it), so maybe no body byte
    # counts as sent yet.
    before = send_until_blocked(tx)
    assert tx.sent < len(DATA) and before == tx.sent + 6
    moved, received = tls_link.exchange(lambda: drive(tx, tls_link.dest), pause=0.0005,
                                        bufsize=64 * 1024)
    assert received == b"HEAD\r\n" + DATA
    assert tx.sent == len(DATA) and before + moved == len(DATA) + 6


def test_sendfile_disabled_or_not_tls_never_uses_kernel_paths(engine, sources, tls_link):
    fastwrap.disable("mmap")
    assert engine.select_path(sources.file(DATA), tls_link.dest) == "readinto"
    assert engine.select_path(sources.pipe(b"x"), tls_link.dest) == "readinto"
    assert engine.select_path(DATA, tls_link.dest) == "read"


def test_response_iterable_over_tls(engine, tls_link):
    body = [DATA[:1000], b"", DATA[1000:200_000]]
    sent, received = tls_link.exchange(
        lambda: engine.transmit(tls_link.dest, body, None, b"H\r\n\r\n"))
    assert sent == 200_000 and received == b"H\r\n\r\n" + DATA[:200_000]
