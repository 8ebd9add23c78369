"""fastwrap._request.parse_head: the contract a compiled parser must keep too.

None while the head is incomplete; else (consumed, method, target, (major,
minor), [(lowercased name, value)]); BadRequest(status) for what the server
refuses.  The event-loop server calls nothing else to read a request head.
"""
from __future__ import annotations

import pytest

from fastwrap._request import BadRequest, parse_head

MAX = 1024


def test_a_whole_head_is_read_and_what_follows_left():
    head = b"GET /a%20b?x=1 HTTP/1.1\r\nHost: example\r\nX-Thing:  two words \r\n\r\n"
    assert parse_head(head + b"GET /next", MAX) == (
        len(head), "GET", "/a%20b?x=1", (1, 1), [("host", "example"), ("x-thing", "two words")])


def test_names_are_lowercased_and_repeats_kept_in_order():
    head = b"GET / HTTP/1.1\r\nHOST: h\r\nAccept: a\r\naccept: b\r\n\r\n"
    assert parse_head(head, MAX)[4] == [("host", "h"), ("accept", "a"), ("accept", "b")]


def test_bare_line_feeds_and_leading_empty_lines_are_accepted():
    # RFC 9112 2.2: a server should skip at least one empty line before the request line.
    head = b"\r\n\nGET / HTTP/1.0\nX: y\n\n"
    assert parse_head(head, MAX) == (len(head), "GET", "/", (1, 0), [("x", "y")])


def test_latin1_values_stay_latin1_str():
    head = b"GET /\xe9 HTTP/1.1\r\nHost: h\r\nX: caf\xe9\r\n\r\n"
    consumed, _, target, _, fields = parse_head(head, MAX)
    assert target == "/\xe9" and fields[1] == ("x", "caf\xe9")


@pytest.mark.parametrize("cut", [0, 1, 5, 16, 17, 25, 30, 32])
def test_an_incomplete_head_is_none(cut):
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n"
    assert parse_head(head[:cut], MAX) is None
    assert parse_head(head, MAX) is not None


def test_empty_lines_alone_are_no_request_yet():
    assert parse_head(b"\r\n\r\n\r\n", MAX) is None


@pytest.mark.parametrize("head, status", [
    (b"GET /" + b"a" * MAX + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    (b"GET /" + b"a" * MAX, 414),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"b" * MAX + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 200, 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 100 + b"\r\n", 431),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n", 400),
    (b"GET / FTP/1.0\r\n\r\n", 400),
    (b"GET / HTTP/1.x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
], ids=["long-line", "long-line-unfinished", "long-field", "too-large-unfinished",
        "too-many-fields", "http-2", "one-word", "four-words", "not-http", "bad-version",
        "no-host", "two-hosts", "no-colon", "space-before-colon", "obsolete-folding"])
def test_what_the_server_refuses_raises_bad_request_with_its_status(head, status):
    with pytest.raises(BadRequest) as caught:
        parse_head(head, MAX)
    assert caught.value.status == status


def test_http_1_0_needs_no_host():
    assert parse_head(b"GET / HTTP/1.0\r\n\r\n", MAX)[3] == (1, 0)
