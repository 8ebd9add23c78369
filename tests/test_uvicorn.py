"""uvicorn with ``--http fastwrap.uvicorn:HttpToolsProtocol`` / ``:H11Protocol``, end to end.

Every test talks to a real uvicorn process on 127.0.0.1 (see
_asgi_servers.py) serving _asgi_apps.py: Starlette's and FastAPI's
``FileResponse``, and a bare ASGI app using ``http.response.zerocopysend``
and ``http.response.pathsend`` itself.  Each checks the bytes the client got,
their framing, and the path fastwrap's counters in the server say the body
took.

The byte-exact cases run on the whole matrix (both engines, both parsers,
asyncio's loop and uvloop); concurrency, disconnects and the rest on a
sample of it that still covers both loops, parsers and engines.

The servers run in the data directory (so that relative paths resolve
there) and obey file modes even as root (so that a mode-000 file is
unreadable to them).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from _support import HANG, needs_linux, random_bytes
from conftest import import_compiled_engine
from test_waiting import evict, resident_pages

pytest.importorskip("uvicorn", reason="uvicorn is in the project's test extra")
pytest.importorskip("starlette", reason="starlette is in the project's test extra")
pytest.importorskip("fastapi", reason="fastapi is in the project's test extra")

from _asgi_apps import PIPED, mixed_expected  # noqa: E402
from _asgi_servers import Server, serve_uvicorn  # noqa: E402

SMALL = random_bytes(4096 + 3, seed=901)
DATA = random_bytes(3_000_000 + 17, seed=902)
BIG = random_bytes(24 * 1024 * 1024 + 5, seed=903)  # beyond any socket buffers
COLD = BIG[:6_000_000]  # evicted from the page cache before it is asked for
FILES = {"small.bin": SMALL, "data.bin": DATA, "big.bin": BIG, "empty.bin": b"",
         "cold.bin": COLD}
ZERO_COPY = "sendfile"


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _combo(engine: str, http: str, loop: str) -> Any:
    marks = []
    if engine == "c":
        marks.append(pytest.mark.c_extension)
        if import_compiled_engine() is None:
            marks.append(pytest.mark.skip(reason="compiled engine not built"))
    if http == "httptools" and not _has("httptools"):
        marks.append(pytest.mark.skip(reason="httptools is in the project's test extra"))
    if loop == "uvloop" and not _has("uvloop"):
        marks.append(pytest.mark.skip(reason="uvloop is in the project's test extra"))
    name = f"{engine}-{http}-{loop}"
    return pytest.param(name, id=name, marks=marks)


#: Every engine x parser x loop: the byte-exact cases.
FULL = [_combo(e, h, lp) for e in ("c", "pure") for h in ("httptools", "h11")
        for lp in ("asyncio", "uvloop")]
#: Both loops, both parsers, both engines, in three servers.
SAMPLE = [p for p in FULL if p.id in ("c-httptools-asyncio", "c-h11-uvloop",
                                      "pure-httptools-uvloop")]
#: The sample and the fourth engine x parser pair.
PAIRS = SAMPLE + [p for p in FULL if p.id == "pure-h11-asyncio"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("asgi-data")
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    # What a path may name that cannot be sent.
    (directory / "subdir").mkdir()
    os.mkfifo(directory / "fifo")
    (directory / "locked.bin").write_bytes(SMALL)
    (directory / "locked.bin").chmod(0)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def server(request, data_dir):
    """fastwrap's protocol in uvicorn; the h11 ones started by uvicorn.run(http=class)."""
    engine, http, loop = request.param.split("-")
    with serve_uvicorn(http=f"fastwrap-{http}", loop=loop, engine=engine, data_dir=data_dir,
                       programmatic=http == "h11", cwd=data_dir,
                       file_permissions=True) as started:
        info = started.stats()
        assert info["implementation"] == ("cython" if engine == "c" else "python")
        yield started


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


# -- Starlette and FastAPI FileResponse ----------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("target", ["/file/data.bin", "/file/small.bin", "/static/data.bin",
                                    "/fastapi/file/data.bin"])
def test_file_response_leaves_byte_exact_by_sendfile(server, target):
    data = FILES[target.rsplit("/", 1)[1]]
    before = server.stats()
    response, = exchange(server, [("GET", target, [])])
    after = server.stats()
    assert response.status == 200
    assert response.header("content-length") == str(len(data))
    assert response.body == data
    assert moved(before, after) == {ZERO_COPY: (1, len(data))}


@pytest.mark.parametrize("server", FULL, indirect=True)
def test_head_304_and_range_on_starlette(server):
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
    # Starlette answers a Range itself, reading the file (no pathsend for it).
    assert ranged.status == 206 and ranged.body == DATA[1000:2000000]
    assert empty.status == 200 and empty.body == b""
    assert moved(before, after) == {ZERO_COPY: (1, len(DATA))}


# -- the bare extensions -------------------------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
def test_zerocopysend_offset_count_and_descriptors(server):
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


@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("chunked", [False, True])
def test_zerocopysend_mixed_with_body_messages(server, chunked):
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


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_pathsend_framing(server):
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


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_extensions_advertised_on_http_1_1_only(server):
    one_one = json.loads(server.request("GET", "/raw/scope").body)
    assert one_one["extensions"] == ["http.response.pathsend", "http.response.zerocopysend"]
    with server.connect() as conn:
        conn.send_request("GET", "/raw/scope", version="HTTP/1.0")
        one_zero = json.loads(conn.read_response().body)
    assert one_zero["http_version"] == "1.0" and one_zero["extensions"] == []
    assert "fastwrap: plain HTTP/1.1 connection" in server.log_text()


# -- files that turn out unusable ------------------------------------------------------------

def answer(server: Server, target: str) -> bytes:
    """All the server writes for one GET of *target*, until it closes, without its Date."""
    with server.connect() as conn:
        conn.send_request("GET", target)
        raw = conn.read_to_eof()
    return b"\r\n".join(line for line in raw.split(b"\r\n")
                         if not line.lower().startswith(b"date: "))


@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("target", ["/rel/data.bin", "/fastapi/rel/data.bin",
                                    "/raw/pathsend?name=data.bin&relative=1"])
def test_relative_paths_resolve_in_the_working_directory(server, target):
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


@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("target", list(UNUSABLE))
def test_unusable_file_before_the_first_byte_is_uvicorns_500(server, target):
    failed = answer(server, "/raw/fail")  # uvicorn's answer to an application that failed
    assert failed.startswith(b"HTTP/1.1 500 ")
    logged = len(server.log_text())
    assert answer(server, target) == failed
    assert UNUSABLE[target] in server.log_text()[logged:]
    assert server.request("GET", "/file/small.bin").body == SMALL


@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("query", ["name=missing.bin&cl=10", "name=subdir&cl=10",
                                   f"name=small.bin&cl={len(SMALL) + 1000}"])
def test_unusable_file_after_the_head_left_closes_with_nothing_more(server, query):
    with server.connect() as conn:
        conn.send_request("GET", f"/raw/pathsend?{query}&flush=1")
        response = conn.read_response()
        assert response.status == 200 and response.body == b"" and not response.complete
        assert conn.eof
    assert server.request("GET", "/file/small.bin").body == SMALL


@pytest.mark.parametrize("server", PAIRS, indirect=True)
def test_file_shrinking_mid_body_closes_the_connection(server, data_dir):
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


# -- slow clients, disconnects ---------------------------------------------------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_slow_client_holds_only_its_own_request(server):
    before = server.stats()
    with server.connect(rcvbuf=16 * 1024) as slow:
        slow.send_request("GET", "/file/big.bin", ["Connection: close"])
        start = slow.read(64 * 1024)  # then stop reading: the server's sends block
        assert start.startswith(b"HTTP/1.1 200 ")
        results: List[Any] = []

        def fast() -> None:
            results.append(server.request("GET", "/file/data.bin").body == DATA)

        threads = [threading.Thread(target=fast, daemon=True) for _ in range(4)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG)
        assert results == [True] * 4, "the fast clients did not get their files"
        assert time.monotonic() - began < HANG
        rest = slow.read_to_eof()
    head, _, body = (start + rest).partition(b"\r\n\r\n")
    assert body == BIG
    after = server.stats()
    assert moved(before, after) == {ZERO_COPY: (5, 4 * len(DATA) + len(BIG))}


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_disconnects_mid_file_end_the_transfer_and_leak_nothing(server):
    server.request("GET", "/file/small.bin")  # whatever a first request opens lazily
    info = server.stats()
    disconnects = info["disconnects"]
    fds = server.open_fds()
    for _ in range(100):
        with server.connect(rcvbuf=16 * 1024) as conn:
            conn.send_request("GET", "/raw/disconnect")
            assert conn.read(32 * 1024).startswith(b"HTTP/1.1 200 ")
        # leaving with unread bytes: the kernel resets the connection
    deadline = time.monotonic() + HANG
    while True:
        info = server.stats()
        settled = info["disconnects"] - disconnects == 100 and server.open_fds() == fds
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert info["disconnects"] - disconnects == 100, "receive() did not say http.disconnect"
    assert server.open_fds() == fds, "descriptors leaked"
    assert server.request("GET", "/file/small.bin").body == SMALL


# -- TLS, gunicorn --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_ca():
    trustme = pytest.importorskip("trustme", reason="trustme is in the project's test extra")
    return trustme.CA()


@pytest.mark.parametrize("combo", SAMPLE[:2])
def test_tls_advertises_and_copies_through_the_transport(combo, data_dir, tls_ca):
    engine, http, loop = combo.split("-")
    with serve_uvicorn(http=f"fastwrap-{http}", loop=loop, engine=engine, data_dir=data_dir,
                       tls=tls_ca) as server:
        scope = json.loads(server.request("GET", "/raw/scope").body)
        assert scope["scheme"] == "https"
        assert scope["extensions"] == ["http.response.pathsend", "http.response.zerocopysend"]
        before = server.stats()
        big, mixed, offset = exchange(server, [("GET", "/file/big.bin", []),
                                               ("GET", "/raw/mixed?chunked=1", []),
                                               ("GET", "/raw/zerocopy?offset=9&count=99", [])])
        assert big.body == BIG
        assert mixed.body == mixed_expected(DATA)
        assert offset.body == DATA[9:108]
        assert moved(before, server.stats()) == {}  # the engine never saw a TLS socket
        assert server.request("GET", "/stale/missing.bin").status == 500
        assert "fastwrap: TLS connection" in server.log_text()


@pytest.mark.parametrize("combo", [SAMPLE[0]])
def test_gunicorn_uvicorn_worker(combo, data_dir):
    pytest.importorskip("gunicorn", reason="gunicorn is in the project's test extra")
    from _serve_gunicorn import serve_gunicorn
    with serve_gunicorn("_asgi_apps:app", worker="fastwrap.uvicorn.UvicornWorker",
                        env={"FASTWRAP_TEST_DIR": str(data_dir)}) as url:
        port = int(url.rsplit(":", 1)[1])
        server = Server(port, None, None, None)
        before = server.stats()
        response = server.request("GET", "/file/data.bin")
        assert response.body == DATA
        assert moved(before, server.stats()) == {ZERO_COPY: (1, len(DATA))}


# -- exactly stock uvicorn's answers -----------------------------------------------------------

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


def _answers(server: Server) -> List[bytes]:
    answers = []
    for request in SAMPLE_REQUESTS:
        with server.connect() as conn:
            conn.send(request)
            answer = conn.read_to_eof()
        answers.append(b"\r\n".join(line for line in answer.split(b"\r\n")
                                    if not line.lower().startswith(b"date: ")))
    return answers


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_answers_are_stock_uvicorns(http, data_dir):
    if http == "httptools":
        pytest.importorskip("httptools", reason="httptools is in the project's test extra")
    with serve_uvicorn(http=f"stock-{http}", data_dir=data_dir, cwd=data_dir) as stock:
        expected = _answers(stock)
    with serve_uvicorn(http=f"fastwrap-{http}", data_dir=data_dir, cwd=data_dir) as ours:
        got = _answers(ours)
    for request, want, have in zip(SAMPLE_REQUESTS, expected, got):
        assert have == want, request


# -- what the loop waits for: an empty pipe, a cold file ---------------------------------------

def observed_during(server: Server, method: str, target: str) -> Tuple[Any, Dict[str, Any]]:
    """The response to one request, and what the app observed of its file's sending."""
    seen = len(server.stats()["waits"])
    response = server.request(method, target)
    observed, = server.stats()["waits"][seen:]
    return response, observed


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_empty_pipe_is_waited_for_not_polled(server, framing):
    # The pipe stays empty for half a second: the loop must sleep on it.
    response, observed = observed_during(
        server, "GET", f"/raw/pipe?cl={int(framing == 'content-length')}")
    assert response.complete and response.body == PIPED
    assert observed["sends"] <= 10, f"{observed['sends']} steps for one wait"


def make_cold(data_dir: Any) -> None:
    path = str(data_dir / "cold.bin")
    evict(path)
    if resident_pages(path):
        pytest.skip("this filesystem keeps evicted pages resident (no POSIX_FADV_DONTNEED)")


@needs_linux
@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_cold_file_is_read_in_off_the_loop(server, data_dir):
    make_cold(data_dir)
    response, observed = observed_during(server, "GET", "/raw/cold")
    assert response.body == COLD
    assert observed["off_loop"], "the cold file was read on the loop"
    assert all(observed["off_loop"])
    assert observed["ticks"]  # the loop ran other tasks during the transfer


@needs_linux
@pytest.mark.parametrize("combo", [SAMPLE[0], SAMPLE[2]])
def test_over_tls_a_cold_file_is_read_off_the_loop(combo, data_dir, tls_ca):
    engine, http, loop = combo.split("-")
    with serve_uvicorn(http=f"fastwrap-{http}", loop=loop, engine=engine, data_dir=data_dir,
                       tls=tls_ca) as server:
        make_cold(data_dir)
        response, observed = observed_during(server, "GET", "/raw/cold?via=read")
    assert response.body == COLD
    # Pieces the kernel has read ahead meanwhile may be read on the loop; cold ones never.
    assert any(observed["off_loop"]), "the cold file was read on the loop"
    assert observed["cold_on_loop"] == 0
    assert observed["ticks"]
