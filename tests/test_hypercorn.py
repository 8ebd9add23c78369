"""hypercorn through ``python -m fastwrap.hypercorn``, end to end.

Every test talks to a real hypercorn process on 127.0.0.1 (see
_asgi_servers.py), started with hypercorn's own command line, serving the
apps of _asgi_apps.py (Starlette's and FastAPI's ``FileResponse``, and a bare
ASGI app sending ``http.response.pathsend`` and ``http.response.zerocopysend``
itself) from hypercorn's default worker process.  Each checks the bytes the
client got, their framing, and the path fastwrap's counters in the worker
say the body took.

The byte-exact cases run on the whole matrix (both engines, hypercorn's
asyncio and uvloop workers); the rest on a sample covering both engines and
both workers.  The servers run in the data directory (so that relative
paths resolve there) and obey file modes even as root.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import pytest

from _support import HANG
from conftest import import_compiled_engine

pytest.importorskip("hypercorn", reason="hypercorn is in the project's test extra")
pytest.importorskip("starlette", reason="starlette is in the project's test extra")
pytest.importorskip("fastapi", reason="fastapi is in the project's test extra")

from _asgi_apps import mixed_expected  # noqa: E402
from _asgi_servers import Server, serve_hypercorn  # noqa: E402
from test_uvicorn import (  # noqa: E402
    BIG, DATA, FILES, SAMPLE_REQUESTS, SMALL, UNUSABLE, answer, exchange, moved)

ZERO_COPY = "sendfile"
EXTENSIONS = ["http.response.pathsend", "http.response.zerocopysend"]


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _combo(engine: str, worker: str) -> Any:
    marks = []
    if engine == "c":
        marks.append(pytest.mark.c_extension)
        if import_compiled_engine() is None:
            marks.append(pytest.mark.skip(reason="compiled engine not built"))
    if worker == "uvloop" and not _has("uvloop"):
        marks.append(pytest.mark.skip(reason="uvloop is in the project's test extra"))
    name = f"{engine}-{worker}"
    return pytest.param(name, id=name, marks=marks)


#: Every engine x worker: the byte-exact cases.
FULL = [_combo(e, w) for e in ("c", "pure") for w in ("asyncio", "uvloop")]
#: Both engines, both workers, in two servers.
SAMPLE = [p for p in FULL if p.id in ("c-asyncio", "pure-uvloop")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hypercorn-data")
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    (directory / "subdir").mkdir()
    os.mkfifo(directory / "fifo")
    (directory / "locked.bin").write_bytes(SMALL)
    (directory / "locked.bin").chmod(0)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def server(request, data_dir):
    engine, worker = request.param.split("-")
    with serve_hypercorn(worker=worker, engine=engine, data_dir=data_dir, cwd=data_dir,
                         file_permissions=True) as started:
        info = started.stats()
        assert info["implementation"] == ("cython" if engine == "c" else "python")
        assert info["pid"] != started.process.pid, "not served by hypercorn's worker process"
        yield started


# -- Starlette and FastAPI FileResponse ----------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("target", ["/file/data.bin", "/file/small.bin", "/static/data.bin",
                                    "/fastapi/file/data.bin", "/file/big.bin"])
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
def test_head_304_range_and_empty_file(server):
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
    assert ranged.status == 206 and ranged.body == DATA[1000:2000000]  # Starlette reads it
    assert empty.status == 200 and empty.body == b"" and empty.header("content-length") == "0"
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


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
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


def logged_soon(server: Server, text: str, since: int) -> bool:
    """Whether *text* is in the server's log after *since*: the line follows the body's bytes."""
    deadline = time.monotonic() + HANG
    while text not in server.log_text()[since:]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_debug_line_names_the_path_of_each_file_body(server):
    logged = len(server.log_text())
    server.request("GET", "/file/data.bin")
    server.request("GET", "/raw/zerocopy?offset=5&count=1000")
    assert logged_soon(server, f"fastwrap: GET /file/data.bin: {len(DATA)} of {len(DATA)} "
                               "body bytes by sendfile", logged)
    assert logged_soon(server, "fastwrap: GET /raw/zerocopy: 1000 of 1000 body bytes by sendfile",
                       logged)


@pytest.mark.parametrize("combo", SAMPLE)
def test_the_debug_line_names_another_path_when_sendfile_is_off(combo, data_dir):
    engine, worker = combo.split("-")
    with serve_hypercorn(worker=worker, engine=engine, data_dir=data_dir,
                         env={"FASTWRAP_DISABLE": "sendfile"}) as server:
        before = server.stats()
        assert server.request("GET", "/file/data.bin").body == DATA
        (path, counts), = moved(before, server.stats()).items()
        assert path != "sendfile" and counts == (1, len(DATA))
        assert logged_soon(server, f"{len(DATA)} of {len(DATA)} body bytes by {path}\n", 0)


# -- files that turn out unusable ------------------------------------------------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("target", ["/rel/data.bin", "/fastapi/rel/data.bin",
                                    "/raw/pathsend?name=data.bin&relative=1"])
def test_relative_paths_resolve_in_the_working_directory(server, target):
    before = server.stats()
    response, = exchange(server, [("GET", target, [])])
    assert response.status == 200 and response.body == DATA
    assert moved(before, server.stats()) == {ZERO_COPY: (1, len(DATA))}


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("target", list(UNUSABLE))
def test_unusable_file_before_the_first_byte_is_hypercorns_500(server, target):
    failed = answer(server, "/raw/fail")  # hypercorn's answer to an application that failed
    assert failed.startswith(b"HTTP/1.1 500 ")
    logged = len(server.log_text())
    assert answer(server, target) == failed
    assert UNUSABLE[target] in server.log_text()[logged:]
    assert server.request("GET", "/file/small.bin").body == SMALL


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("query", ["name=missing.bin&cl=10", "name=subdir&cl=10",
                                   f"name=small.bin&cl={len(SMALL) + 1000}"])
def test_unusable_file_after_the_head_left_closes_with_nothing_more(server, query):
    with server.connect() as conn:
        conn.send_request("GET", f"/raw/pathsend?{query}&flush=1")
        response = conn.read_response()
        assert response.status == 200 and response.body == b"" and not response.complete
        assert conn.eof
    assert server.request("GET", "/file/small.bin").body == SMALL


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("server", SAMPLE[:1], indirect=True)
def test_curl_sees_a_response_cut_short_as_exit_18(server):
    url = f"http://127.0.0.1:{server.port}/raw/pathsend?name=small.bin&cl={len(SMALL) + 1000}"
    done = subprocess.run(["curl", "-sS", "-o", os.devnull, url + "&flush=1"],
                          capture_output=True, timeout=HANG)
    assert done.returncode == 18, done.stderr  # CURLE_PARTIAL_FILE
    whole = subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", url],
                           capture_output=True, timeout=HANG)
    assert (whole.returncode, whole.stdout) == (0, b"500")  # caught before the head left


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
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
    assert server.request("GET", "/file/small.bin").body == SMALL


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
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG)
        assert results == [True] * 4, "the fast clients did not get their files"
        rest = slow.read_to_eof()
    assert (start + rest).partition(b"\r\n\r\n")[2] == BIG
    assert moved(before, server.stats()) == {ZERO_COPY: (5, 4 * len(DATA) + len(BIG))}


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_disconnects_mid_file_end_the_transfer_and_leak_nothing(server):
    server.request("GET", "/file/small.bin")  # whatever a first request opens lazily
    disconnects = server.stats()["disconnects"]
    fds = server.open_fds()
    for _ in range(50):
        with server.connect(rcvbuf=16 * 1024) as conn:
            conn.send_request("GET", "/raw/disconnect")
            assert conn.read(32 * 1024).startswith(b"HTTP/1.1 200 ")
        # leaving with unread bytes: the kernel resets the connection
    deadline = time.monotonic() + HANG
    while True:
        info = server.stats()
        settled = info["disconnects"] - disconnects == 50 and server.open_fds() == fds
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert info["disconnects"] - disconnects == 50, "receive() did not say http.disconnect"
    assert server.open_fds() == fds, "descriptors leaked"
    assert server.request("GET", "/file/small.bin").body == SMALL


# -- what stays stock: HTTP/1.0, HTTP/2, TLS, and hypercorn's own answers -----------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_extensions_advertised_on_plain_http_1_1_only(server):
    one_one = json.loads(server.request("GET", "/raw/scope").body)
    assert one_one["extensions"] == EXTENSIONS
    with server.connect() as conn:
        conn.send_request("GET", "/raw/scope", version="HTTP/1.0")
        one_zero = json.loads(conn.read_response().body)
    assert one_zero["http_version"] == "1.0" and one_zero["extensions"] == []


def h2c_get(server: Server, target: str) -> Dict[str, Any]:
    """One GET over HTTP/2 with prior knowledge (h2c): its status and body."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", target), (":scheme", "http"),
                          (":authority", "127.0.0.1")], end_stream=True)
    result: Dict[str, Any] = {"status": None, "body": bytearray()}
    with socket.create_connection((server.host, server.port), timeout=HANG) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(1 << 16)
            assert data, "the server closed the HTTP/2 connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    result["status"] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    result["body"] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    return result


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_http2_keeps_stock_behaviour_and_does_not_advertise(server):
    pytest.importorskip("h2", reason="h2 comes with hypercorn")
    scope = h2c_get(server, "/raw/scope")
    assert scope["status"] == 200
    scope = json.loads(scope["body"])
    assert scope["http_version"] == "2"
    assert not set(EXTENSIONS) & set(scope["extensions"])
    before = server.stats()
    response = h2c_get(server, "/file/data.bin")
    assert response["status"] == 200 and bytes(response["body"]) == DATA
    assert moved(before, server.stats()) == {}  # Starlette read and sent it itself


@pytest.fixture(scope="module")
def tls_ca():
    trustme = pytest.importorskip("trustme", reason="trustme is in the project's test extra")
    return trustme.CA()


def test_tls_keeps_stock_behaviour_and_does_not_advertise(data_dir, tls_ca):
    with serve_hypercorn(data_dir=data_dir, tls=tls_ca) as server:
        scope = json.loads(server.request("GET", "/raw/scope").body)
        assert scope["scheme"] == "https" and scope["extensions"] == []
        before = server.stats()
        assert server.request("GET", "/file/data.bin").body == DATA
        assert moved(before, server.stats()) == {}


def test_answers_are_stock_hypercorns(data_dir):
    def answers(server: Server) -> List[bytes]:
        result = []
        for request in SAMPLE_REQUESTS:
            with server.connect() as conn:
                conn.send(request)
                raw = conn.read_to_eof()
            result.append(b"\r\n".join(line for line in raw.split(b"\r\n")
                                       if not line.lower().startswith(b"date: ")))
        return result

    with serve_hypercorn(stock=True, data_dir=data_dir, cwd=data_dir) as stock:
        expected = answers(stock)
    with serve_hypercorn(data_dir=data_dir, cwd=data_dir) as ours:
        before = ours.stats()
        got = answers(ours)
        # The file responses among them left through the engine.
        assert moved(before, ours.stats()) == {ZERO_COPY: (3, 3 * len(SMALL))}
    for request, want, have in zip(SAMPLE_REQUESTS, expected, got):
        assert have == want, request


@pytest.mark.parametrize("combo", SAMPLE)
def test_serve_from_a_program(combo, data_dir):
    engine, loop = combo.split("-")
    with serve_hypercorn(worker=loop, engine=engine, data_dir=data_dir,
                         programmatic=True) as server:
        assert server.worker_pid == server.process.pid
        assert json.loads(server.request("GET", "/raw/scope").body)["extensions"] == EXTENSIONS
        before = server.stats()
        assert server.request("GET", "/file/data.bin").body == DATA
        assert moved(before, server.stats()) == {ZERO_COPY: (1, len(DATA))}
        assert logged_soon(server, f"{len(DATA)} of {len(DATA)} body bytes by sendfile", 0)


def test_in_process_worker_and_an_unknown_worker_class(data_dir):
    with serve_hypercorn(data_dir=data_dir, workers=0) as server:
        assert server.worker_pid == server.process.pid
        before = server.stats()
        assert server.request("GET", "/file/data.bin").body == DATA
        assert moved(before, server.stats()) == {ZERO_COPY: (1, len(DATA))}
    done = subprocess.run([sys.executable, "-m", "fastwrap.hypercorn", "_asgi_apps:app",
                           "--worker-class", "trio"], capture_output=True, timeout=HANG,
                          text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fastwrap.hypercorn: fastwrap.hypercorn runs hypercorn's asyncio and uvloop workers, "
        "not 'trio': use --worker-class asyncio or uvloop"]
