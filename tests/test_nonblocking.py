"""Transmission: one non-blocking step at a time, as an event loop drives it."""
from __future__ import annotations

import pytest

from _support import (ALL_PATHS, drive, expected_path, random_bytes, send_until_blocked)

DATA = random_bytes(2_000_000 + 3, seed=60)
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Length: 2000003\r\n\r\n"


@pytest.fixture(params=["socketpair", "tcp"])
def nb_link(request, socketpair_link, tcp_link):
    made = socketpair_link if request.param == "socketpair" else tcp_link
    made.shrink_buffers()
    made.dest.setblocking(False)
    return made


@pytest.mark.parametrize("path", ALL_PATHS)
def test_selectors_driven_transmission_with_slow_reader_is_byte_exact(
        engine, sources, nb_link, path):
    tx = engine.Transmission(sources.of_path(path, DATA), nb_link.dest, None, HEADERS)
    assert tx.path == expected_path(engine, path)
    blocked = []
    moved, received = nb_link.exchange(
        lambda: drive(tx, nb_link.dest, on_block=lambda: blocked.append(1)),
        pause=0.0002, bufsize=32 * 1024)
    assert received == HEADERS + DATA
    assert tx.done and tx.sent == len(DATA)
    assert moved == len(HEADERS) + len(DATA)  # send() reports headers too
    assert blocked  # the slow reader really made send() wait


@pytest.mark.parametrize("path", ALL_PATHS)
def test_send_raises_blocking_io_error_when_full_and_resumes_exactly(
        engine, sources, nb_link, path):
    tx = engine.Transmission(sources.of_path(path, DATA), nb_link.dest, None, HEADERS)
    before = send_until_blocked(tx)
    assert before == len(HEADERS) + tx.sent
    assert 0 < tx.sent < len(DATA) and not tx.done
    with pytest.raises(BlockingIOError):
        tx.send()  # still full: nothing moved, so it raises again
    assert not tx.done
    moved, received = nb_link.exchange(lambda: drive(tx, nb_link.dest))
    assert received == HEADERS + DATA
    assert before + moved == len(HEADERS) + len(DATA)
    assert tx.sent == len(DATA) and tx.done


def test_send_after_done_returns_zero(engine, nb_link):
    tx = engine.Transmission(b"abc", nb_link.dest)
    moved, received = nb_link.exchange(lambda: drive(tx, nb_link.dest))
    assert received == b"abc" and moved == 3
    assert tx.send() == 0 and tx.done and tx.sent == 3


def test_headers_count_in_send_but_not_in_sent(engine, nb_link):
    tx = engine.Transmission(b"body", nb_link.dest, headers=b"head:")
    assert tx.sent == 0 and not tx.done
    moved, received = nb_link.exchange(lambda: drive(tx, nb_link.dest))
    assert (moved, tx.sent, received) == (9, 4, b"head:body")


def test_headers_only_transmission_finishes(engine, sources, nb_link):
    tx = engine.Transmission(sources.file(b""), nb_link.dest, headers=b"HTTP/1.1 204 No\r\n\r\n")
    assert not tx.done
    moved, received = nb_link.exchange(lambda: drive(tx, nb_link.dest))
    assert received == b"HTTP/1.1 204 No\r\n\r\n" and moved == 19 and tx.sent == 0


def test_empty_transmission_without_headers_is_done_at_once(engine, nb_link):
    tx = engine.Transmission(b"", nb_link.dest)
    assert tx.done and tx.sent == 0 and tx.send() == 0


def test_transmission_with_count(engine, sources, nb_link):
    tx = engine.Transmission(sources.file(DATA), nb_link.dest, 1_234_567)
    moved, received = nb_link.exchange(lambda: drive(tx, nb_link.dest), pause=0.0002)
    assert received == DATA[:1_234_567] and tx.sent == moved == 1_234_567


def test_transmission_is_a_context_manager_that_closes(engine, sources, nb_link):
    f = sources.file(DATA)
    with engine.Transmission(f, nb_link.dest) as tx:
        send_until_blocked(tx)
    assert tx.done
    assert f.tell() == tx.sent
    tx.close()  # idempotent
    assert f.tell() == tx.sent


def test_source_with_no_data_yet_raises_blocking_and_then_completes(engine, sources, nb_link):
    # A non-blocking raw pipe fed in pieces by a thread: send() must not spin
    # out an empty body nor block the loop; the bytes all arrive in order.
    pipe = sources.pipe(DATA, buffering=0, nonblocking=True, pieces=40)
    tx = engine.Transmission(pipe, nb_link.dest)
    moved, received = nb_link.exchange(lambda: drive(tx, nb_link.dest))
    assert received == DATA and tx.sent == moved == len(DATA)


def test_blocking_transmit_refuses_a_non_blocking_socket_clearly(engine, sources, nb_link):
    with pytest.raises(ValueError, match="Transmission"):
        engine.FileWrapper(sources.file(DATA)).transmit(nb_link.dest)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_blocking_transmit_to_a_socket_with_timeout_sends_everything(
        engine, sources, socketpair_link, path):
    # A timeout makes the descriptor non-blocking: every EAGAIN must be waited
    # out, not taken for the end.
    socketpair_link.shrink_buffers()
    socketpair_link.dest.settimeout(60)
    source = sources.of_path(path, DATA)
    sent, received = socketpair_link.exchange(
        lambda: engine.transmit_file(source, socketpair_link.dest), pause=0.0002,
        bufsize=32 * 1024)
    assert received == DATA and sent == len(DATA)
