"""fastwrap.asgi: the file messages' rules that the uvicorn and hypercorn integrations share.

End to end, every rule is checked against real servers (_asgi_checks.py);
these tests pin the decisions themselves, including the ones no server
integration reaches today.
"""
from __future__ import annotations

import os

import pytest

from fastwrap import asgi


def test_allowance_follows_the_response_head():
    length = [(b"Content-Length", b"1000")]
    assert asgi.allowance("GET", 200, length, 0) == 1000
    assert asgi.allowance("GET", 200, length, 300) == 700
    assert asgi.allowance("GET", 200, length, 5000) == 0
    assert asgi.allowance("HEAD", 200, length, 0) == 0
    for status in (101, 204, 304):
        assert asgi.allowance("GET", status, length, 0) == 0
    assert asgi.allowance("GET", 200, [(b"transfer-encoding", b"chunked")], 0) is None
    assert asgi.allowance("GET", 200, [(b"content-length", b"nope")], 0) is None
    # The first Content-Length counts, as servers take it.
    assert asgi.allowance("GET", 200, length + [(b"content-length", b"5")], 0) == 1000


def test_portion_of_a_file_under_an_allowance(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    cases = [  # (message extras, allowance) -> (n, exact, unfillable, short(sent=n-1))
        ({}, None, (100, True, False, 100)),
        ({}, 50, (50, True, False, 50)),
        ({}, 150, (100, True, True, 100)),          # the file shrank since its length was taken
        ({"count": 10}, 150, (10, True, True, 10)),  # a last message short of the length
        ({"count": 10, "more_body": True}, 150, (10, True, False, 10)),
        ({"offset": 95}, None, (5, True, False, 5)),
    ]
    with open(path, "rb") as f:
        for extras, allowance, expected in cases:
            message = {"type": asgi.ZEROCOPYSEND, "file": f, **extras}
            source = asgi.FileSource(message)
            try:
                portion = asgi.Portion(source, allowance)
                got = (portion.n, portion.exact, portion.unfillable,
                       portion.short(portion.n - 1))
                assert got == expected, (extras, allowance)
            finally:
                source.close()
            assert f.tell() == 0  # an offset leaves the position where it was


def test_a_pipe_has_no_length_until_it_ends():
    r, w = os.pipe()
    with open(r, "rb", buffering=0) as f:
        os.close(w)
        source = asgi.FileSource({"type": asgi.ZEROCOPYSEND, "file": f})
        assert source.wanted() is None
        assert asgi.Portion(source, None).n is None       # chunked: it can only be copied
        portion = asgi.Portion(source, 40)
        assert (portion.n, portion.exact) == (40, False)  # up to the Content-Length
        assert portion.short(39) == 40


def test_pathsend_portion_with_offset_and_count(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    cases = [  # (message extras, allowance) -> (n, unfillable, short(sent=n-1), reason)
        ({"offset": 10, "count": 20}, 20, (20, False, 20)),
        ({"offset": 10, "count": 20, "more_body": True}, 500, (20, False, 20)),
        ({"offset": 90, "count": 20}, 20, (10, True, 10)),   # past the end: never short-filled
        ({"offset": 90, "count": 20, "more_body": True}, 500, (10, True, 10)),
        ({"offset": 200, "count": 1}, None, (0, True, None)),
        ({"offset": 90, "count": 20}, 0, (0, False, None)),  # HEAD: nothing is sent
        ({"offset": 95}, None, (5, False, 5)),               # no count: to the end
    ]
    for extras, allowance, expected in cases:
        source = asgi.FileSource({"type": asgi.PATHSEND, "path": str(path), **extras})
        try:
            portion = asgi.Portion(source, allowance)
            n = portion.n
            assert n is not None
            got = (n, portion.unfillable, portion.short(n - 1) if n else None)
            assert got == expected, (extras, allowance)
            assert source.final is not extras.get("more_body", False)
        finally:
            source.close()
    source = asgi.FileSource({"type": asgi.PATHSEND, "path": str(path), "offset": 90,
                              "count": 20})
    try:
        assert asgi.Portion(source, 20).unfillable_reason() == \
            "the file holds 10 bytes of the 20 the pathsend counts"
    finally:
        source.close()


def test_advertise_says_ranges_and_more_body_for_pathsend():
    scope: dict = {}
    asgi.advertise(scope)
    assert scope["extensions"] == {asgi.PATHSEND: {"ranges": True, "more_body": True},
                                   asgi.ZEROCOPYSEND: {}}
    scope["extensions"][asgi.PATHSEND]["ranges"] = False  # an application's own copy
    assert asgi.PATHSEND_EXTENSION["ranges"] is True


@pytest.mark.parametrize("message, error", [
    ({"type": asgi.PATHSEND, "path": b"/etc/hostname"}, "needs the file's path as a str"),
    ({"type": asgi.PATHSEND, "path": "/etc/hostname", "offset": -1},
     "http.response.pathsend 'offset' must be an int >= 0, got -1"),
    ({"type": asgi.PATHSEND, "path": "/etc/hostname", "count": 1.5},
     "http.response.pathsend 'count' must be an int >= 0, got 1.5"),
    ({"type": asgi.PATHSEND, "path": "/etc/hostname", "more_body": "yes"},
     "http.response.pathsend 'more_body' must be True or False, got 'yes'"),
    ({"type": asgi.ZEROCOPYSEND, "file": None}, "needs 'file'"),
    ({"type": asgi.ZEROCOPYSEND, "file": 0, "count": -1}, "'count' must be an int >= 0"),
])
def test_what_cannot_name_a_file_is_one_clear_error(message, error):
    with pytest.raises(RuntimeError, match=error):
        asgi.FileSource(message)


def test_h11_frame_counts_the_body_and_gives_the_chunk_framing():
    h11 = pytest.importorskip("h11", reason="h11 is in the project's test extra")

    def responding(headers):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        conn.next_event()
        conn.send(h11.Response(status_code=200, headers=headers))
        return conn

    fixed = responding([("Content-Length", "10")])
    assert asgi.h11_frame(fixed, 10) == (b"", b"")
    assert fixed.send(h11.EndOfMessage()) == b""  # h11 counted the ten bytes
    chunked = responding([("Transfer-Encoding", "chunked")])
    assert asgi.h11_frame(chunked, 300) == (b"12c\r\n", b"\r\n")


def _creates_stream():
    return StreamClass()  # noqa: F821 - bound by rebind


def test_rebind_swaps_one_name_and_refuses_a_function_without_it():
    class Mine:
        pass

    hooked = asgi.rebind(_creates_stream, "StreamClass", Mine, "fastwrap.test")
    assert isinstance(hooked(), Mine)
    assert hooked.__qualname__ == _creates_stream.__qualname__
    with pytest.raises(ImportError, match="fastwrap.test does not know this server version: "
                                          "_creates_stream no longer uses OtherClass"):
        asgi.rebind(_creates_stream, "OtherClass", Mine, "fastwrap.test")
