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

import contextlib
import json
import shutil
from typing import Any

import pytest

from _support import needs_linux
from conftest import import_compiled_engine

pytest.importorskip("uvicorn", reason="uvicorn is in the project's test extra")
pytest.importorskip("starlette", reason="starlette is in the project's test extra")
pytest.importorskip("fastapi", reason="fastapi is in the project's test extra")

from _asgi_checks import (  # noqa: E402
    BAD_PATHSEND, BIG, COLD, DATA, EXTENSIONS, RANGES, RANGE_TARGETS, RELATIVE,
    SAMPLE_FILE_BODIES, SAMPLE_REQUESTS, UNUSABLE, UNUSABLE_AFTER_HEAD, ZERO_COPY, answer,
    assert_same_answers, check_a_cold_file_is_read_in_off_the_loop,
    check_a_slow_client_holds_only_its_own_request, check_an_empty_pipe_is_waited_for,
    check_bad_pathsend_fields, check_clients_leaving_mid_range_leak_nothing,
    check_disconnects_leak_nothing, check_file_response, check_file_shrinking_mid_body,
    check_head_304_range_and_empty, check_pathsend_framing,
    check_pathsend_offset_count_and_more_body, check_range_answer,
    check_range_answers_without_a_body_are_stock, check_range_beyond_a_file_that_shrank_before,
    check_range_of_a_file_shrinking_mid_body, check_relative_path,
    check_unusable_after_the_head_left, check_unusable_before_the_first_byte,
    check_zerocopysend_mixed_with_body_messages,
    check_zerocopysend_offset_count_and_descriptors, exchange, has_module, make_cold,
    make_data_dir, moved, needs_sound_multipart, needs_takeover, observed_during,
    sample_answers, tls_ca, without_boundary)
from _asgi_apps import mixed_expected  # noqa: E402
from _asgi_servers import Server, serve_uvicorn  # noqa: E402


def _combo(engine: str, http: str, loop: str) -> Any:
    marks = []
    if engine == "c":
        marks.append(pytest.mark.c_extension)
        if import_compiled_engine() is None:
            marks.append(pytest.mark.skip(reason="compiled engine not built"))
    if http == "httptools" and not has_module("httptools"):
        marks.append(pytest.mark.skip(reason="httptools is in the project's test extra"))
    if loop == "uvloop" and not has_module("uvloop"):
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
    make_data_dir(directory)
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
        started.parser = http
        yield started


@pytest.fixture(scope="module")
def stock(data_dir):
    """Stock uvicorn with the parser of the server under test, started when first asked for."""
    with contextlib.ExitStack() as stack:
        started = {}

        def for_parser(http: str) -> Server:
            if http not in started:
                started[http] = stack.enter_context(serve_uvicorn(
                    http=f"stock-{http}", data_dir=data_dir, cwd=data_dir))
            return started[http]

        yield for_parser


# -- Starlette and FastAPI FileResponse ----------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("target", ["/file/data.bin", "/file/small.bin", "/static/data.bin",
                                    "/fastapi/file/data.bin"])
def test_file_response_leaves_byte_exact_by_sendfile(server, target):
    check_file_response(server, target)


@pytest.mark.parametrize("server", FULL, indirect=True)
def test_head_304_and_range_on_starlette(server):
    check_head_304_range_and_empty(server)


# -- the bare extensions -------------------------------------------------------------------

@pytest.mark.parametrize("server", FULL, indirect=True)
def test_zerocopysend_offset_count_and_descriptors(server):
    check_zerocopysend_offset_count_and_descriptors(server)


@pytest.mark.parametrize("server", FULL, indirect=True)
@pytest.mark.parametrize("chunked", [False, True])
def test_zerocopysend_mixed_with_body_messages(server, chunked):
    check_zerocopysend_mixed_with_body_messages(server, chunked)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_pathsend_framing(server):
    check_pathsend_framing(server)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_extensions_advertised_on_http_1_1_only(server):
    one_one = json.loads(server.request("GET", "/raw/scope").body)
    assert one_one["extensions"] == EXTENSIONS
    with server.connect() as conn:
        conn.send_request("GET", "/raw/scope", version="HTTP/1.0")
        one_zero = json.loads(conn.read_response().body)
    assert one_zero["http_version"] == "1.0" and one_zero["extensions"] == []
    assert "fastwrap: plain HTTP/1.1 connection" in server.log_text()


# -- files that turn out unusable ------------------------------------------------------------

@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("target", RELATIVE)
def test_relative_paths_resolve_in_the_working_directory(server, target):
    check_relative_path(server, target)


@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("target", list(UNUSABLE))
def test_unusable_file_before_the_first_byte_is_uvicorns_500(server, target):
    check_unusable_before_the_first_byte(server, target)


@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("query", UNUSABLE_AFTER_HEAD)
def test_unusable_file_after_the_head_left_closes_with_nothing_more(server, query):
    check_unusable_after_the_head_left(server, query)


@pytest.mark.parametrize("server", PAIRS, indirect=True)
def test_file_shrinking_mid_body_closes_the_connection(server, data_dir):
    check_file_shrinking_mid_body(server, data_dir)


# -- slow clients, disconnects ---------------------------------------------------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_slow_client_holds_only_its_own_request(server):
    check_a_slow_client_holds_only_its_own_request(server)


@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_disconnects_mid_file_end_the_transfer_and_leak_nothing(server):
    check_disconnects_leak_nothing(server, 100)


# -- TLS, gunicorn --------------------------------------------------------------------------

@pytest.mark.parametrize("combo", SAMPLE[:2])
def test_tls_advertises_and_copies_through_the_transport(combo, data_dir, tls_ca):
    engine, http, loop = combo.split("-")
    with serve_uvicorn(http=f"fastwrap-{http}", loop=loop, engine=engine, data_dir=data_dir,
                       tls=tls_ca) as server:
        scope = json.loads(server.request("GET", "/raw/scope").body)
        assert scope["scheme"] == "https"
        assert scope["extensions"] == EXTENSIONS
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

@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_answers_are_stock_uvicorns(http, data_dir):
    if http == "httptools":
        pytest.importorskip("httptools", reason="httptools is in the project's test extra")
    with serve_uvicorn(http=f"stock-{http}", data_dir=data_dir, cwd=data_dir) as stock:
        expected = sample_answers(stock)
    with serve_uvicorn(http=f"fastwrap-{http}", data_dir=data_dir, cwd=data_dir) as ours:
        before = ours.stats()
        got = sample_answers(ours)
        assert moved(before, ours.stats()) == {ZERO_COPY: SAMPLE_FILE_BODIES}
    assert_same_answers(SAMPLE_REQUESTS, expected, got)


# -- what the loop waits for: an empty pipe, a cold file ---------------------------------------

@pytest.mark.parametrize("server", SAMPLE, indirect=True)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_empty_pipe_is_waited_for_not_polled(server, framing):
    check_an_empty_pipe_is_waited_for(server, framing)


@needs_linux
@pytest.mark.parametrize("server", SAMPLE, indirect=True)
def test_a_cold_file_is_read_in_off_the_loop(server, data_dir):
    check_a_cold_file_is_read_in_off_the_loop(server, data_dir)


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


# -- Range answers: Starlette's FileResponse by pathsend with offset and count -----------------

@pytest.mark.parametrize("server", PAIRS, indirect=True)
@pytest.mark.parametrize("target", RANGE_TARGETS)
@pytest.mark.parametrize("range_, parts", RANGES)
def test_range_answers_are_stock_uvicorns_each_part_by_sendfile(server, stock, target, range_,
                                                                 parts):
    check_range_answer(server, stock(server.parser), target, range_, parts)


@pytest.mark.parametrize("server", PAIRS, indirect=True)
def test_if_range_head_unsatisfiable_and_empty_ranges_are_stock_uvicorns(server, stock):
    check_range_answers_without_a_body_are_stock(server, stock(server.parser))


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


@pytest.mark.parametrize("server", SAMPLE[:2], indirect=True)
@pytest.mark.parametrize("bad", list(BAD_PATHSEND))
def test_bad_pathsend_fields_are_a_500_or_a_close(server, bad):
    check_bad_pathsend_fields(server, bad)


@needs_sound_multipart
@pytest.mark.parametrize("combo", SAMPLE[:2])
def test_range_answers_over_tls_copy_through_the_transport(combo, data_dir, tls_ca):
    engine, http, loop = combo.split("-")
    with serve_uvicorn(http=f"fastwrap-{http}", loop=loop, engine=engine, data_dir=data_dir,
                       tls=tls_ca) as server:
        before = server.stats()
        single, several = exchange(server, [
            ("GET", "/file/data.bin", ["Range: bytes=1000-1999999"]),
            ("GET", "/static/data.bin", ["Range: bytes=0-9,-100"])])
        assert single.status == 206 and single.body == DATA[1000:2000000]
        assert several.status == 206 and DATA[-100:] in several.body and several.complete
        assert moved(before, server.stats()) == {}  # the engine never saw a TLS socket


def test_under_stock_uvicorn_starlettes_own_range_code_runs(data_dir):
    """Taken over but not advertised: Starlette's own answers (it reads the file)."""
    env = {"FASTWRAP_TEST_STARLETTE_INSTALL": "1"}
    requests = [("/file/data.bin", ["Range: bytes=1000-1999999"]),
                ("/static/data.bin", ["Range: bytes=0-9,1000-1999,-100"])]
    with serve_uvicorn(http="stock-h11", data_dir=data_dir, cwd=data_dir) as stock:
        expected = [without_boundary(answer(stock, t, h)) for t, h in requests]
    with serve_uvicorn(http="stock-h11", data_dir=data_dir, cwd=data_dir, env=env) as patched:
        before = patched.stats()
        got = [without_boundary(answer(patched, t, h)) for t, h in requests]
        assert moved(before, patched.stats()) == {}
    assert_same_answers(requests, expected, got)
