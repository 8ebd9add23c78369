"""What every ASGI server integration must do with file messages, as checks on a running server.

test_uvicorn.py and test_hypercorn.py start their servers (see
_asgi_servers.py) over the data directory :func:`make_data_dir` fills and
call these checks with them, so each rule is asserted the same way for
every server.  A check talks to the server over real sockets, compares the
bytes the client got and their framing, and asks the server's
``/__stats__`` which path fastwrap's engine sent the body by.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
import re
from typing import Any, Dict, List, Sequence, Tuple

import pytest

import fastwrap.starlette
from _asgi_apps import PIPED, mixed_expected
from _asgi_servers import Server
from _support import HANG, random_bytes
from test_waiting import evict, resident_pages

SMALL = random_bytes(4096 + 3, seed=901)
DATA = random_bytes(3_000_000 + 17, seed=902)
BIG = random_bytes(24 * 1024 * 1024 + 5, seed=903)  # beyond any socket buffers
COLD = BIG[:6_000_000]  # evicted from the page cache before it is asked for
FILES = {"small.bin": SMALL, "data.bin": DATA, "big.bin": BIG, "empty.bin": b"",
         "cold.bin": COLD}
ZERO_COPY = "sendfile"
#: Whether this Starlette's range answers are ones fastwrap.starlette takes over
#: (else the servers run Starlette's own, which reads the file).
TAKEN_OVER = fastwrap.starlette.why_not() is None
needs_takeover = pytest.mark.skipif(not TAKEN_OVER, reason=f"fastwrap.starlette: "
                                    f"{fastwrap.starlette.why_not()}")
#: Several ranges: Starlette before 1.5 mislabels and misframes its multipart answers
#: (on stock servers too), so they are checked with a Starlette fastwrap knows.
needs_sound_multipart = pytest.mark.skipif(
    not TAKEN_OVER, reason="this Starlette's multipart/byteranges answers are malformed")
EXTENSIONS = ["http.response.pathsend", "http.response.zerocopysend"]


def make_data_dir(directory: Path) -> None:
    """The files, and what a path may name that cannot be sent."""
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    (directory / "subdir").mkdir()
    os.mkfifo(directory / "fifo")
    (directory / "locked.bin").write_bytes(SMALL)
    (directory / "locked.bin").chmod(0)


def moved(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Tuple[int, int]]:
    """Per path that moved anything: (transmissions, bytes) between two /__stats__."""
    result = {}
    for path, counts in after["stats"].items():
        delta = (counts["transmissions"] - before["stats"][path]["transmissions"],
                 counts["bytes"] - before["stats"][path]["bytes"])
        if delta != (0, 0):
            result[path] = delta
    return result


def exchange(server: Server, requests: List[Tuple[str, str, List[str]]]) -> List[Any]:
    """Send *requests* one after the other on one kept-alive connection."""
    with server.connect() as conn:
        responses = []
        for method, target, headers in requests:
            conn.send_request(method, target, headers)
            responses.append(conn.read_response(method))
        conn.send_request("GET", "/plain", ["Connection: close"])
        last = conn.read_response()
        assert last.body == b"hello from uvicorn\n", "keep-alive broke after the responses"
        assert conn.read_to_eof() == b"", "bytes beyond the framing"
    return responses


def answer(server: Server, target: str, headers: Sequence[str] = (),
           method: str = "GET") -> bytes:
    """All the server writes for one request of *target*, until it closes, without its Date."""
    with server.connect() as conn:
        conn.send_request(method, target, [*headers, "Connection: close"])
        raw = conn.read_to_eof()
    return _dateless(raw)


def has_module(module: str) -> bool:
    """Whether *module* imports here (an optional server part: httptools, uvloop, h2)."""
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def tls_ca() -> Any:
    """A trustme CA, for servers started with a certificate it issued."""
    trustme = pytest.importorskip("trustme", reason="trustme is in the project's test extra")
    return trustme.CA()


def assert_same_answers(requests: Sequence[Any], expected: List[bytes],
                        got: List[bytes]) -> None:
    """Each of *got* is byte for byte the stock server's answer to the same request."""
    assert len(got) == len(expected)
    for request, want, have in zip(requests, expected, got):
        assert have == want, request


def _dateless(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n")
                        if not line.lower().startswith(b"date: "))


# -- Starlette and FastAPI FileResponse ----------------------------------------------------

def check_file_response(server: Server, target: str) -> None:
    data = FILES[target.rsplit("/", 1)[1]]
    before = server.stats()
    response, = exchange(server, [("GET", target, [])])
    after = server.stats()
    assert response.status == 200
    assert response.header("content-length") == str(len(data))
    assert response.body == data
    assert moved(before, after) == {ZERO_COPY: (1, len(data))}


def check_head_304_range_and_empty(server: Server) -> None:
    before = server.stats()
    head, full = exchange(server, [("HEAD", "/static/data.bin", []),
                                   ("GET", "/static/data.bin", [])])
    etag = full.header("etag")
    not_modified, ranged, empty = exchange(server, [
        ("GET", "/static/data.bin", [f"If-None-Match: {etag}"]),
        ("GET", "/file/data.bin", ["Range: bytes=1000-1999999"]),
        ("GET", "/file/empty.bin", [])])
    after = server.stats()
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(DATA))
    assert not_modified.status == 304 and not_modified.body == b""
    # Starlette's Range answer too, by pathsend with offset and count.
    assert ranged.status == 206 and ranged.body == DATA[1000:2000000]
    assert empty.status == 200 and empty.body == b"" and empty.header("content-length") == "0"
    assert moved(before, after) == ({ZERO_COPY: (2, len(DATA) + 1999000)} if TAKEN_OVER
                                    else {ZERO_COPY: (1, len(DATA))})


# -- the bare extensions -------------------------------------------------------------------

def check_zerocopysend_offset_count_and_descriptors(server: Server) -> None:
    before = server.stats()
    positions = len(before["positions"])
    responses = exchange(server, [
        ("GET", "/raw/zerocopy?offset=12345&count=1000000", []),
        ("GET", "/raw/zerocopy?offset=0&count=1", []),
        ("GET", f"/raw/zerocopy?offset={len(DATA) - 10}&count=10", []),
        ("GET", "/raw/descriptor?start=777&count=300000", [])])
    after = server.stats()
    assert [r.body for r in responses] == [DATA[12345:1012345], DATA[:1], DATA[-10:],
                                           DATA[777:777 + 600000]]
    # With an offset the file's position stays (7); without one it moves past the bytes sent.
    assert after["positions"][positions:] == [7, 7, 7, 777 + 600000]
    assert moved(before, after) == {ZERO_COPY: (5, 1000000 + 1 + 10 + 600000)}


def check_zerocopysend_mixed_with_body_messages(server: Server, chunked: bool) -> None:
    before = server.stats()
    response, = exchange(server, [("GET", f"/raw/mixed?chunked={int(chunked)}", [])])
    after = server.stats()
    expected = mixed_expected(DATA)
    assert response.body == expected
    if chunked:
        assert response.header("transfer-encoding") == "chunked"
    else:
        assert response.header("content-length") == str(len(expected))
    assert moved(before, after) == {ZERO_COPY: (3, 1000 + 70000 + 1)}


def check_pathsend_framing(server: Server) -> None:
    before = server.stats()
    longer, chunked, head, empty = exchange(server, [
        ("GET", "/raw/pathsend?cl=1000", []),          # the file holds more: exactly 1000
        ("GET", "/raw/pathsend?cl=none", []),          # no Content-Length: one chunk
        ("HEAD", "/raw/pathsend", []),
        ("GET", "/raw/pathsend?name=empty.bin", [])])
    after = server.stats()
    assert longer.body == DATA[:1000] and longer.header("content-length") == "1000"
    assert chunked.header("transfer-encoding") == "chunked" and chunked.body == DATA
    assert head.body == b"" and head.header("content-length") == str(len(DATA))
    assert empty.body == b"" and empty.header("content-length") == "0"
    assert moved(before, after) == {ZERO_COPY: (2, 1000 + len(DATA))}


# -- files that turn out unusable ------------------------------------------------------------

#: Paths that resolve in the servers' working directory, the data directory.
RELATIVE = ["/rel/data.bin", "/fastapi/rel/data.bin", "/raw/pathsend?name=data.bin&relative=1"]


def check_relative_path(server: Server, target: str) -> None:
    before = server.stats()
    response, = exchange(server, [("GET", target, [])])
    assert response.status == 200 and response.body == DATA
    assert moved(before, server.stats()) == {ZERO_COPY: (1, len(DATA))}


#: Files found unusable when the body is to leave, the head still held back.
UNUSABLE = {
    "/file/locked.bin": "Permission denied",             # mode 000: Starlette's stat works
    "/stale/missing.bin": "No such file or directory",   # gone since Starlette's stat
    "/stale/subdir": "is not a regular file",            # replaced by a directory
    "/stale/fifo": "is not a regular file",              # ... by a FIFO, never opened
    "/stale/small.bin?stat=data.bin": "the file holds 4099 bytes",  # shrank since
    f"/raw/pathsend?name=small.bin&cl={len(SMALL) + 1000}": "the file holds 4099 bytes",
}

#: pathsend queries whose file is found unusable after an empty body put the head out.
UNUSABLE_AFTER_HEAD = ["name=missing.bin&cl=10", "name=subdir&cl=10",
                       f"name=small.bin&cl={len(SMALL) + 1000}"]


def check_unusable_before_the_first_byte(server: Server, target: str) -> None:
    """The server's own answer to an application that failed before its response."""
    failed = answer(server, "/raw/fail")
    assert failed.startswith(b"HTTP/1.1 500 ")
    logged = len(server.log_text())
    assert answer(server, target) == failed
    assert UNUSABLE[target] in server.log_text()[logged:]
    assert server.request("GET", "/file/small.bin").body == SMALL


def check_unusable_after_the_head_left(server: Server, query: str) -> None:
    """The connection closes with nothing more: the client sees a short response."""
    with server.connect() as conn:
        conn.send_request("GET", f"/raw/pathsend?{query}&flush=1")
        response = conn.read_response()
        assert response.status == 200 and response.body == b"" and not response.complete
        assert conn.eof
    assert server.request("GET", "/file/small.bin").body == SMALL


def check_file_shrinking_mid_body(server: Server, data_dir: Path) -> None:
    name = "shrinking.bin"
    path = data_dir / name
    path.write_bytes(BIG)
    try:
        with server.connect(rcvbuf=16 * 1024) as conn:
            conn.send_request("GET", f"/file/{name}")
            first = conn.read(64 * 1024)  # the body has begun; its sender now waits on us
            os.truncate(path, len(BIG) // 2)
            head, _, body = (first + conn.read_to_eof()).partition(b"\r\n\r\n")
    finally:
        path.unlink()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"content-length: {len(BIG)}".encode() in head.lower().split(b"\r\n")
    assert body == BIG[:len(BIG) // 2], "not closed where the file ended"
    assert f"the file ended after {len(BIG) // 2} of {len(BIG)}" in server.log_text()
    assert server.request("GET", "/file/small.bin").body == SMALL


# -- slow clients, disconnects ---------------------------------------------------------------

def check_a_slow_client_holds_only_its_own_request(server: Server) -> None:
    before = server.stats()
    with server.connect(rcvbuf=16 * 1024) as slow:
        slow.send_request("GET", "/file/big.bin", ["Connection: close"])
        start = slow.read(64 * 1024)  # then stop reading: the server's sends block
        assert start.startswith(b"HTTP/1.1 200 ")
        results: List[Any] = []

        def fast() -> None:
            results.append(server.request("GET", "/file/data.bin").body == DATA)

        threads = [threading.Thread(target=fast, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG)
        assert results == [True] * 4, "the fast clients did not get their files"
        rest = slow.read_to_eof()
    assert (start + rest).partition(b"\r\n\r\n")[2] == BIG
    assert moved(before, server.stats()) == {ZERO_COPY: (5, 4 * len(DATA) + len(BIG))}


def check_disconnects_leak_nothing(server: Server, times: int) -> None:
    """*times* clients leave mid-file: each transfer ends, the app hears it, no fd is left."""
    server.request("GET", "/file/small.bin")  # whatever a first request opens lazily
    disconnects = server.stats()["disconnects"]
    fds = server.open_fds()
    for _ in range(times):
        with server.connect(rcvbuf=16 * 1024) as conn:
            conn.send_request("GET", "/raw/disconnect")
            assert conn.read(32 * 1024).startswith(b"HTTP/1.1 200 ")
        # leaving with unread bytes: the kernel resets the connection
    deadline = time.monotonic() + HANG
    while True:
        info = server.stats()
        settled = info["disconnects"] - disconnects == times and server.open_fds() == fds
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert info["disconnects"] - disconnects == times, "receive() did not say http.disconnect"
    assert server.open_fds() == fds, "descriptors leaked"
    assert server.request("GET", "/file/small.bin").body == SMALL


# -- what the loop waits for: an empty pipe, a cold file ---------------------------------------

def observed_during(server: Server, method: str, target: str) -> Tuple[Any, Dict[str, Any]]:
    """The response to one request, and what the app observed of its file's sending."""
    seen = len(server.stats()["waits"])
    response = server.request(method, target)
    observed, = server.stats()["waits"][seen:]
    return response, observed


def check_an_empty_pipe_is_waited_for(server: Server, framing: str) -> None:
    # The pipe stays empty for half a second: the loop must sleep on it.
    response, observed = observed_during(
        server, "GET", f"/raw/pipe?cl={int(framing == 'content-length')}")
    assert response.complete and response.body == PIPED
    assert observed["sends"] <= 10, f"{observed['sends']} steps for one wait"


def make_cold(data_dir: Path) -> None:
    path = str(data_dir / "cold.bin")
    evict(path)
    if resident_pages(path):
        pytest.skip("this filesystem keeps evicted pages resident (no POSIX_FADV_DONTNEED)")


def check_a_cold_file_is_read_in_off_the_loop(server: Server, data_dir: Path) -> None:
    make_cold(data_dir)
    response, observed = observed_during(server, "GET", "/raw/cold")
    assert response.body == COLD
    assert observed["off_loop"], "the cold file was read on the loop"
    assert all(observed["off_loop"])
    assert observed["ticks"]  # the loop ran other tasks during the transfer


# -- exactly the stock server's answers ---------------------------------------------------------

SAMPLE_REQUESTS = [
    b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /missing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"HEAD /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /plain HTTP/1.0\r\nHost: t\r\n\r\n",
    # keep-alive and pipelining: three requests in one segment
    b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\nGET /stream HTTP/1.1\r\nHost: t\r\n\r\n"
    b"GET /missing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + b"\x00garbage\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    # file responses, relative paths (the servers run in the data directory), failures
    b"GET /file/small.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /rel/small.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /fastapi/rel/small.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /raw/fail HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /file/missing.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /file/subdir HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
]
#: What the file responses among them send, through fastwrap: (transmissions, bytes).
SAMPLE_FILE_BODIES = (3, 3 * len(SMALL))


def sample_answers(server: Server) -> List[bytes]:
    """The server's answer to each of SAMPLE_REQUESTS, each on its own connection, dateless."""
    answers = []
    for request in SAMPLE_REQUESTS:
        with server.connect() as conn:
            conn.send(request)
            answers.append(_dateless(conn.read_to_eof()))
    return answers


# -- Range answers: Starlette's FileResponse by pathsend with offset and count -----------------

#: Each Range header, and the parts of DATA (start, end) Starlette answers it with.
_RANGES = [
    ("bytes=1000-1999999", [(1000, 2000000)]),
    ("bytes=2000000-", [(2000000, len(DATA))]),                        # open end
    ("bytes=-5000", [(len(DATA) - 5000, len(DATA))]),                  # suffix
    ("bytes=0-0", [(0, 1)]),
    ("bytes=0-9,1000-1999,-100", [(0, 10), (1000, 2000), (len(DATA) - 100, len(DATA))]),
    ("bytes=500-599,0-99,550-700", [(0, 100), (500, 701)]),            # sorted, merged
    ("bytes=0-1048575,2000000-2999999", [(0, 1048576), (2000000, 3000000)]),
]
RANGES = [pytest.param(header, parts, id=header,
                       marks=[needs_sound_multipart] if len(parts) > 1 else [])
          for header, parts in _RANGES]
RANGE_TARGETS = ["/file/data.bin", "/static/data.bin", "/fastapi/file/data.bin"]

_BOUNDARY = re.compile(rb"multipart/byteranges; boundary=([0-9a-f]+)")


def without_boundary(answer: bytes) -> bytes:
    """*answer* with its multipart boundary (random, drawn per response) made a fixed one."""
    found = _BOUNDARY.search(answer)
    if found is None:
        return answer
    return answer.replace(found.group(1), b"B" * len(found.group(1)))


def byteranges(response: Any) -> List[Tuple[str, bytes]]:
    """The (Content-Range, bytes) of each part of a multipart/byteranges response."""
    found = _BOUNDARY.search(b"content-type: " + (response.header("content-type") or "").encode())
    assert found is not None, response
    delimiter = b"--" + found.group(1)
    assert response.body.endswith(delimiter + b"--")
    parts = []
    for piece in response.body[:-len(delimiter) - 2].split(delimiter + b"\r\n")[1:]:
        head, _, data = piece.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        ranges = [line for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-range:")]
        parts.append((ranges[0].split(b":", 1)[1].strip().decode(), data[:-2]))
    return parts


def check_range_answer(server: Server, stock: Server, target: str, range_: str,
                       parts: List[Tuple[int, int]]) -> None:
    """The stock server's answer (the boundary aside), each part sent by the engine."""
    before = server.stats()
    response, = exchange(server, [("GET", target, [f"Range: {range_}"])])
    after = server.stats()
    assert response.status == 206 and response.complete
    if len(parts) == 1:
        (start, end), = parts
        assert response.body == DATA[start:end]
        assert response.header("content-range") == f"bytes {start}-{end - 1}/{len(DATA)}"
    else:
        assert byteranges(response) == [(f"bytes {start}-{end - 1}/{len(DATA)}",
                                          DATA[start:end]) for start, end in parts]
    assert moved(before, after) == ({ZERO_COPY: (len(parts), sum(e - s for s, e in parts))}
                                    if TAKEN_OVER else {})
    headers = [f"Range: {range_}"]
    assert without_boundary(answer(server, target, headers)) == \
        without_boundary(answer(stock, target, headers))


def check_range_answers_without_a_body_are_stock(server: Server, stock: Server) -> None:
    """If-Range, HEAD, unsatisfiable and malformed ranges, an empty file: the stock answers."""
    etag = server.request("GET", "/file/data.bin").header("etag")
    modified = server.request("GET", "/file/data.bin").header("last-modified")
    one, two, whole = {ZERO_COPY: (1, 10)}, {ZERO_COPY: (2, 20)}, {ZERO_COPY: (1, len(DATA))}
    cases: List[Tuple[str, str, List[str], Dict[str, Tuple[int, int]]]] = [
        ("GET", "/file/data.bin", ["Range: bytes=10-19", f"If-Range: {etag}"], one),
        ("GET", "/file/data.bin", ["Range: bytes=10-19", f"If-Range: {modified}"], one),
        ("GET", "/file/data.bin", ["Range: bytes=10-19", 'If-Range: "stale"'], whole),
        ("GET", "/static/data.bin", ["Range: bytes=10-19,30-39", f"If-Range: {etag}"], two),
        ("HEAD", "/file/data.bin", ["Range: bytes=10-19"], {}),
        ("HEAD", "/static/data.bin", ["Range: bytes=10-19,30-39"], {}),
        ("GET", "/file/data.bin", [f"Range: bytes={len(DATA)}-"], {}),       # 416
        ("GET", "/file/data.bin", ["Range: bytes=-0"], {}),                 # 416
        ("GET", "/fastapi/file/data.bin", ["Range: bytes=9-1"], {}),        # 400
        ("GET", "/file/data.bin", ["Range: pages=1-2"], {}),                # 400
        ("GET", "/file/empty.bin", ["Range: bytes=0-"], {}),                # 416, */0
        ("GET", "/static/empty.bin", ["Range: bytes=-10"], {}),
    ]
    for method, target, headers, engine_moved in cases:
        before = server.stats()
        ours = answer(server, target, headers, method)
        after = server.stats()
        theirs = answer(stock, target, headers, method)
        assert without_boundary(ours) == without_boundary(theirs), (method, target, headers)
        if not TAKEN_OVER and engine_moved != whole:
            engine_moved = {}  # Starlette reads ranges itself
        assert moved(before, after) == engine_moved, (method, target, headers)


def check_range_of_a_file_shrinking_mid_body(server: Server, data_dir: Path,
                                              range_: str) -> None:
    """The connection closes where the file ended: never a complete-looking 206."""
    name = "shrinking-range.bin"
    path = data_dir / name
    path.write_bytes(BIG)
    try:
        with server.connect(rcvbuf=16 * 1024) as conn:
            conn.send_request("GET", f"/file/{name}", [f"Range: {range_}"])
            first = conn.read(64 * 1024)  # the body has begun; its sender now waits on us
            os.truncate(path, len(BIG) // 2)
            raw = first + conn.read_to_eof()
    finally:
        path.unlink()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    found = re.search(rb"(?i)content-length: (\d+)", head)
    assert found is not None, head
    length = int(found.group(1))
    assert len(body) < length, "a 206 as long as announced from a file that shrank"
    if "," not in range_:
        start = int(range_.split("=")[1].split("-")[0])
        assert body == BIG[start:len(BIG) // 2], "not closed where the file ended"
    assert "the file ended after" in server.log_text()
    assert server.request("GET", "/file/small.bin").body == SMALL


def check_range_beyond_a_file_that_shrank_before(server: Server) -> None:
    """Starlette took the length of another file: 500 while the head is held, else closed."""
    failed = answer(server, "/raw/fail")
    logged = len(server.log_text())
    # Starlette's ranges fit data.bin's length; small.bin holds nothing from 5000 on.
    assert answer(server, "/stale/small.bin?stat=data.bin", ["Range: bytes=5000-5999"]) == failed
    assert "the file holds 0 bytes of the 1000 the pathsend counts" in server.log_text()[logged:]
    with server.connect() as conn:
        conn.send_request("GET", "/stale/small.bin?stat=data.bin",
                          ["Range: bytes=0-99,5000-5099"])
        response = conn.read_response()
        assert response.status == 206 and not response.complete
        assert response.body.split(b"\r\n\r\n", 1)[1].startswith(SMALL[:100])
        conn.read_to_eof()
        assert conn.eof
    assert server.request("GET", "/file/small.bin").body == SMALL


def _settled_fds(server: Server) -> int:
    """The server's descriptor count once it has stayed the same for 0.3 s."""
    count, since = server.open_fds(), time.monotonic()
    deadline = since + HANG
    while time.monotonic() - since < 0.3 and time.monotonic() < deadline:
        time.sleep(0.05)
        now = server.open_fds()
        if now != count:
            count, since = now, time.monotonic()
    return count


def check_clients_leaving_mid_range_leak_nothing(server: Server, times: int) -> None:
    """Clients leave inside a big part: each transfer ends, no descriptor is left open."""
    server.request("GET", "/file/small.bin")
    # The baseline once the server has closed its end of that request's connection
    # (it may do so a moment after the client has its answer): a count taken before
    # would hold a descriptor that then goes, and never be reached again.
    fds = _settled_fds(server)
    for i in range(times):
        range_ = "bytes=100-" if i % 2 else "bytes=0-99,1000-"
        with server.connect(rcvbuf=16 * 1024) as conn:
            conn.send_request("GET", "/file/big.bin", [f"Range: {range_}"])
            assert conn.read(32 * 1024).startswith(b"HTTP/1.1 206 ")
    deadline = time.monotonic() + HANG
    while server.open_fds() > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.open_fds() <= fds, "descriptors leaked"
    response = server.request("GET", "/file/big.bin", ["Range: bytes=-10"])
    assert response.status == 206 and response.body == BIG[-10:]


# -- the pathsend fields themselves -------------------------------------------------------------

def check_pathsend_offset_count_and_more_body(server: Server) -> None:
    scope = json.loads(server.request("GET", "/raw/scope").body)
    assert scope["pathsend"] == {"ranges": True, "more_body": True}
    before = server.stats()
    sized, chunked, head = exchange(server, [
        ("GET", "/raw/parts?parts=5:1000,0:1,2000000:1000017", []),
        ("GET", "/raw/parts?parts=7:70000,0:0,300:3&cl=none", []),
        ("HEAD", "/raw/parts?parts=5:1000", [])])
    after = server.stats()
    assert sized.body == DATA[5:1005] + DATA[:1] + DATA[2000000:]
    assert sized.header("content-length") == str(1000 + 1 + 1000017)
    assert chunked.header("transfer-encoding") == "chunked"
    assert chunked.body == DATA[7:70007] + DATA[300:303]
    assert head.body == b"" and head.header("content-length") == "1000"
    assert moved(before, after) == {ZERO_COPY: (5, 1000 + 1 + 1000017 + 70000 + 3)}


#: pathsend fields that cannot be right, and the one line logged for each.
BAD_PATHSEND = {
    "offset:-1": "http.response.pathsend 'offset' must be an int >= 0, got -1",
    'count:"10"': "http.response.pathsend 'count' must be an int >= 0, got '10'",
    "count:true": "http.response.pathsend 'count' must be an int >= 0, got True",
    "more_body:1": "http.response.pathsend 'more_body' must be True or False, got 1",
}


def check_bad_pathsend_fields(server: Server, bad: str) -> None:
    """A wrong field: the server's 500 while the head is held, the connection closed after."""
    failed = answer(server, "/raw/fail")
    logged = len(server.log_text())
    assert answer(server, f"/raw/parts?parts=0:10&bad={bad}") == failed
    assert BAD_PATHSEND[bad] in server.log_text()[logged:]
    with server.connect() as conn:
        conn.send_request("GET", f"/raw/parts?parts=0:10&bad={bad}&flush=1")
        response = conn.read_response()
        assert response.status == 200 and response.body == b"" and not response.complete
        assert conn.eof
    # A count reaching past the end of the file.
    past = f"/raw/parts?parts={len(DATA) - 10}:11"
    assert answer(server, past) == failed
    assert "the file holds 10 bytes of the 11 the pathsend counts" in server.log_text()
    assert server.request("GET", "/file/small.bin").body == SMALL
