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
import time
from typing import Any, Dict, List, Tuple

import pytest

from _support import HANG, needs_linux
from conftest import import_compiled_engine

pytest.importorskip("hypercorn", reason="hypercorn is in the project's test extra")
pytest.importorskip("starlette", reason="starlette is in the project's test extra")
pytest.importorskip("fastapi", reason="fastapi is in the project's test extra")

from _asgi_checks import (  # noqa: E402
    BAD_PATHSEND, DATA, EXTENSIONS, RANGES, RANGE_TARGETS, RELATIVE, SAMPLE_FILE_BODIES,
    SAMPLE_REQUESTS, SMALL, UNUSABLE, UNUSABLE_AFTER_HEAD, ZERO_COPY, assert_same_answers,
    check_a_cold_file_is_read_in_off_the_loop, check_a_slow_client_holds_only_its_own_request,
    check_an_empty_pipe_is_waited_for, check_bad_pathsend_fields,
    check_clients_leaving_mid_range_leak_nothing, check_disconnects_leak_nothing,
    check_file_response, check_file_shrinking_mid_body, check_head_304_range_and_empty,
    check_pathsend_framing, check_pathsend_offset_count_and_more_body, check_range_answer,
    check_range_answers_without_a_body_are_stock, check_range_beyond_a_file_that_shrank_before,
    check_range_of_a_file_shrinking_mid_body, check_relative_path,
    check_unusable_after_the_head_left, check_unusable_before_the_first_byte,
    check_zerocopysend_mixed_with_body_messages,
    check_zerocopysend_offset_count_and_descriptors, has_module, make_data_dir, moved,
    needs_sound_multipart, needs_takeover, sample_answers, tls_ca)
from _asgi_servers import Server, serve_hypercorn  # noqa: E402


def _combo(engine: str, worker: str) -> Any:
    marks = []
    if engine == "c":
        marks.append(pytest.mark.c_extension)
        if import_compiled_engine() is None:
            marks.append(pytest.mark.skip(reason="compiled engine not built"))
    if worker == "uvloop" and not has_module("uvloop"):
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
    make_data_dir(directory)
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


@pytest.fixture(scope="module")
def stock(data_dir):
    """Stock hypercorn (``python -m hypercorn``) on the same files."""
    with serve_hypercorn(stock=True, data_dir=data_dir, cwd=data_dir) as started:
        yield started


# -- Starlette and FastAPI FileResponse ----------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("target", ["/file/data.bin", "/file/small.bin", "/static/data.bin",
                                    "/fastapi/file/data.bin", "/file/big.bin"])
def test_file_response_leaves_byte_exact_by_sendfile(server, target):
    check_file_response(server, target)


@pytest.mark.parametrize("server", FULL, indirect=True)
def test_head_304_range_and_empty_file(server):
    check_head_304_range_and_empty(server)


# -- the bare extensions -------------------------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
def test_zerocopysend_offset_count_and_descriptors(server):
    check_zerocopysend_offset_count_and_descriptors(server)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("chunked", [False, True])
def test_zerocopysend_mixed_with_body_messages(server, chunked):
    check_zerocopysend_mixed_with_body_messages(server, chunked)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_pathsend_framing(server):
    check_pathsend_framing(server)


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
@pytest.mark.parametrize("target", RELATIVE)
def test_relative_paths_resolve_in_the_working_directory(server, target):
    check_relative_path(server, target)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("target", list(UNUSABLE))
def test_unusable_file_before_the_first_byte_is_hypercorns_500(server, target):
    check_unusable_before_the_first_byte(server, target)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("query", UNUSABLE_AFTER_HEAD)
def test_unusable_file_after_the_head_left_closes_with_nothing_more(server, query):
    check_unusable_after_the_head_left(server, query)


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
    check_file_shrinking_mid_body(server, data_dir)


# -- slow clients, disconnects ---------------------------------------------------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_slow_client_holds_only_its_own_request(server):
    check_a_slow_client_holds_only_its_own_request(server)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_disconnects_mid_file_end_the_transfer_and_leak_nothing(server):
    check_disconnects_leak_nothing(server, 50)


# -- what the loop waits for: an empty pipe, a cold file ---------------------------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_empty_pipe_is_waited_for_not_polled(server, framing):
    # Chunked, of unknown length, the pipe is read in pieces sent as hypercorn's body events.
    check_an_empty_pipe_is_waited_for(server, framing)


@needs_linux
@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_cold_file_is_read_in_off_the_loop(server, data_dir):
    check_a_cold_file_is_read_in_off_the_loop(server, data_dir)


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
    return h2c_get_with(server, target, [])


def h2c_get_with(server: Server, target: str, headers: List[Tuple[str, str]]) -> Dict[str, Any]:
    """One GET over HTTP/2 with prior knowledge (h2c) and *headers*: its status and body."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", target), (":scheme", "http"),
                          (":authority", "127.0.0.1"), *headers], end_stream=True)
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


def test_tls_keeps_stock_behaviour_and_does_not_advertise(data_dir, tls_ca):
    with serve_hypercorn(data_dir=data_dir, tls=tls_ca) as server:
        scope = json.loads(server.request("GET", "/raw/scope").body)
        assert scope["scheme"] == "https" and scope["extensions"] == []
        before = server.stats()
        assert server.request("GET", "/file/data.bin").body == DATA
        assert moved(before, server.stats()) == {}


def test_answers_are_stock_hypercorns(data_dir):
    with serve_hypercorn(stock=True, data_dir=data_dir, cwd=data_dir) as stock:
        expected = sample_answers(stock)
    with serve_hypercorn(data_dir=data_dir, cwd=data_dir) as ours:
        before = ours.stats()
        got = sample_answers(ours)
        # The file responses among them left through the engine.
        assert moved(before, ours.stats()) == {ZERO_COPY: SAMPLE_FILE_BODIES}
    assert_same_answers(SAMPLE_REQUESTS, expected, got)


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


# -- Range answers: Starlette's FileResponse by pathsend with offset and count -----------------

@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("target", RANGE_TARGETS)
@pytest.mark.parametrize("range_, parts", RANGES)
def test_range_answers_are_stock_hypercorns_each_part_by_sendfile(server, stock, target, range_,
                                                                   parts):
    check_range_answer(server, stock, target, range_, parts)


@pytest.mark.parametrize("server", FULL, indirect=True)
def test_if_range_head_unsatisfiable_and_empty_ranges_are_stock_hypercorns(server, stock):
    check_range_answers_without_a_body_are_stock(server, stock)


@needs_takeover
@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("range_", ["bytes=1000-", "bytes=0-99,1000-"])
def test_range_of_a_file_shrinking_mid_body_closes_the_connection(server, data_dir, range_):
    check_range_of_a_file_shrinking_mid_body(server, data_dir, range_)


@needs_takeover
@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_range_beyond_a_file_that_shrank_is_a_500_or_a_close(server):
    check_range_beyond_a_file_that_shrank_before(server)


@needs_sound_multipart
@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_clients_leaving_mid_range_leak_nothing(server):
    check_clients_leaving_mid_range_leak_nothing(server, 20)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_pathsend_offset_count_and_more_body(server):
    check_pathsend_offset_count_and_more_body(server)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("bad", list(BAD_PATHSEND))
def test_bad_pathsend_fields_are_a_500_or_a_close(server, bad):
    check_bad_pathsend_fields(server, bad)


@pytest.mark.parametrize("server", SAMPLE[:1], indirect=True)
def test_http2_range_answers_stay_starlettes_own(server):
    pytest.importorskip("h2", reason="h2 comes with hypercorn")
    before = server.stats()
    response = h2c_get_with(server, "/file/data.bin", [("range", "bytes=1000-1999")])
    assert response["status"] == 206 and bytes(response["body"]) == DATA[1000:2000]
    assert moved(before, server.stats()) == {}  # not advertised: Starlette read it
