"""`python -m fastwrap serve`: the command, its access log, its errors, and curl against it.

Each engine gets its own server process (FASTWRAP_NO_EXTENSIONS=1 for the
pure one), started with --port 0 on 127.0.0.1 in a temporary directory; the
"Serving ..." line says which engine runs, and the tests check it is the one
asked for.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import fastwrap
from _static_support import (SERVING, ServeProcess, exchange, parse, request, run_cli,
                             unique)
from _support import LINUX, random_bytes

FOUR = random_bytes(4096, seed=14)
BIG = random_bytes(3 * (1 << 20) + 5, seed=15)
HUGE_SIZE = 256 << 20  # sparse: costs no disk, outlasts every socket buffer

needs_sendfile = pytest.mark.skipif(not LINUX, reason="the sendfile path is Linux's")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("serve") / "www"
    path.mkdir()
    (path / "four.bin").write_bytes(FOUR)
    (path / "big.bin").write_bytes(BIG)
    (path / "empty.bin").write_bytes(b"")
    (path / "hello.txt").write_bytes(b"hello\n")
    (path / "sub").mkdir()
    with open(path / "huge.bin", "wb") as f:
        f.truncate(HUGE_SIZE)
    yield path
    (path / "huge.bin").unlink()


@pytest.fixture(scope="module")
def served(engine: Any, root: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(engine, root)
    yield server
    server.stop()


def _no_traceback(lines: list) -> None:
    assert not [line for line in lines if "Traceback" in line], "\n".join(lines)


# -- the serving line ------------------------------------------------------------------------

def test_serving_line_names_the_root_address_version_engine_and_threads(served, engine, root):
    match = SERVING.match(served.serving)
    assert match is not None, served.serving
    assert match["root"] == os.path.realpath(root)
    assert match["host"] == "127.0.0.1"
    assert match["version"] == fastwrap.__version__
    assert match["engine"] == engine.IMPLEMENTATION
    assert match["threads"] == "16"
    # --port 0 picked a real, free port, and the server listens there.
    assert served.port > 0
    response, body = served.get("/four.bin")
    assert (response.status, body) == (200, FOUR)


def test_directory_defaults_to_the_current_one(engine, root):
    server = ServeProcess(engine, None, cwd=root)
    try:
        assert server.match["root"] == os.path.realpath(root)
        response, body = server.get("/hello.txt")
        assert (response.status, body) == (200, b"hello\n")
    finally:
        server.stop()


def test_quiet_logs_no_requests_and_threads_is_reported(engine, root):
    server = ServeProcess(engine, root, "--quiet", "--threads", "3")
    try:
        assert server.match["threads"] == "3"
        for target in ("/four.bin", "/missing", "/sub"):
            server.get(target)
        response, body = server.get("/big.bin")
        assert (response.status, body) == (200, BIG)
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert server.lines == [server.serving, "Interrupted: stopping."]


def test_bind_to_ipv6_loopback(engine, root):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = ServeProcess(engine, root, bind="::1")
    try:
        assert f"at http://[::1]:{server.port}/ " in server.serving
        response, body = server.get("/four.bin")
        assert (response.status, body) == (200, FOUR)
    finally:
        server.stop()


# -- the access log --------------------------------------------------------------------------

def _logged(served: ServeProcess, target: str, headers: Any = None, method: str = "GET"):
    """Make the request; return (response, body, its parsed access-log line)."""
    mark = served.mark()
    tag = unique()
    target = f"{target}{'&' if '?' in target else '?'}{tag}"
    response, body = served.get(target, headers, method=method)
    line = served.access_line(tag, start=mark)
    assert line["client"] == "127.0.0.1"
    assert line["request"] == f"{method} {target} HTTP/1.1"
    # One line per request: by the time a later request is logged, no second one came.
    probe = unique()
    served.get(f"/hello.txt?{probe}")
    served.access_line(probe, start=mark)
    assert len([entry for entry in served.since(mark) if tag in entry]) == 1, served.since(mark)
    return response, body, line


@needs_sendfile
@pytest.mark.parametrize("name, data", [("four.bin", FOUR), ("big.bin", BIG)])
def test_access_log_names_status_bytes_sent_and_sendfile_for_a_file(served, name, data):
    response, body, line = _logged(served, "/" + name)
    assert (response.status, body) == (200, data)
    assert (line["status"], line["size"], line["path"]) == ("200", str(len(data)), "sendfile")


@needs_sendfile
@pytest.mark.parametrize("spec, first, last", [
    ("bytes=10-19", 10, 19), ("bytes=-5", len(BIG) - 5, len(BIG) - 1),
    ("bytes=1000000-", 1000000, len(BIG) - 1)])
def test_access_log_of_a_range_counts_the_range_and_sendfile(served, spec, first, last):
    response, body, line = _logged(served, "/big.bin", {"Range": spec})
    assert (response.status, body) == (206, BIG[first:last + 1])
    assert (line["status"], line["size"], line["path"]) == ("206", str(last - first + 1),
                                                            "sendfile")


def test_access_log_of_a_304_shows_no_bytes_and_no_path(served):
    etag = served.get("/four.bin")[0].getheader("ETag")
    response, body, line = _logged(served, "/four.bin", {"If-None-Match": etag})
    assert (response.status, body) == (304, b"")
    assert (line["status"], line["size"], line["path"]) == ("304", "0", "-")


def test_access_log_of_head_shows_no_bytes_and_no_path(served):
    response, body, line = _logged(served, "/big.bin", method="HEAD")
    assert (response.status, body) == (200, b"")
    assert response.getheader("Content-Length") == str(len(BIG))
    assert (line["status"], line["size"], line["path"]) == ("200", "0", "-")


@pytest.mark.parametrize("target, status", [("/missing.bin", 404), ("/sub", 301), ("/sub/", 200),
                                            ("/../x", 400)])
def test_access_log_of_a_generated_body_counts_it_without_a_path(served, target, status):
    response, body, line = _logged(served, target)
    assert response.status == status
    assert (line["status"], line["size"], line["path"]) == (str(status), str(len(body)), "-")


def test_access_log_counts_what_was_sent_when_the_client_goes_away(served):
    mark = served.mark()
    tag = unique()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((served.host, served.port))
        sock.sendall(request("GET", f"/huge.bin?{tag}"))
        received = 0
        while received < 100_000:
            chunk = sock.recv(65536)
            assert chunk
            received += len(chunk)
        # Reset, not a polite close: the server's next write fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The server notices at its next write: well within seconds.
    line = served.access_line(tag, start=mark, timeout=5)
    assert line["status"] == "200"
    assert 0 < int(line["size"]) < HUGE_SIZE
    response, body = served.get("/four.bin")  # and it goes on serving
    assert (response.status, body) == (200, FOUR)
    _no_traceback(served.since(mark))


def _reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a killed client does, rather than a polite FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


#: Requests the client gives up on: what it sent of them (TAG stands for a unique
#: mark in the target), whether it leaves with a reset, and the statuses its
#: log line may show: 400 for a request never complete, which is not served.
CUT_SHORT = {
    "inside-the-request-line": (b"GET /big.bin?TAG HT", False, {"400"}),
    "before-the-version": (b"GET /big.bin?TAG", False, {"400"}),
    "inside-the-head": (b"GET /big.bin?TAG HTTP/1.1\r\nHost: 127.0.0.1\r\n", False, {"400"}),
    "inside-the-head-reset": (b"GET /big.bin?TAG HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc", True,
                              {"400"}),
    "inside-a-header-line-reset": (b"GET /big.bin?TAG HTTP/1.1\r\nHost: 127.0", True, {"400"}),
    "inside-the-body-reset": (b"POST /hello.txt?TAG HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Content-Length: 100000\r\n\r\n" + b"x" * 5000, True, {"405"}),
    # Gone before or after the server's "100 Continue", as the race falls.
    "waiting-for-100-continue-reset": (b"POST /hello.txt?TAG HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                       b"Expect: 100-continue\r\nContent-Length: 9\r\n\r\n",
                                       True, {"400", "405"}),
}


@pytest.mark.parametrize("sent, reset, statuses", list(CUT_SHORT.values()), ids=list(CUT_SHORT))
def test_a_client_leaving_inside_its_request_gets_one_log_line_and_no_traceback(
        served, sent, reset, statuses):
    mark = served.mark()
    tag = unique()
    sock = socket.create_connection((served.host, served.port), timeout=10)
    sock.sendall(sent.replace(b"TAG", tag.encode()))
    if reset:
        _reset(sock)
    else:
        sock.close()
    line = served.access_line(tag, start=mark)
    assert line["status"] in statuses, line.string
    probe = unique()
    response, body = served.get(f"/four.bin?{probe}")  # and it goes on serving
    assert (response.status, body) == (200, FOUR)
    served.access_line(probe, start=mark)  # every line before it is in, too
    logged = served.since(mark)
    _no_traceback(logged)
    assert [entry for entry in logged if tag in entry] == [line.string], logged


def test_a_half_closed_client_inside_its_head_is_answered_400(served):
    # It stopped writing but may still read: it learns why nothing is served.
    data = exchange(served.port, b"GET /four.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    response = parse(data)
    assert response.status == 400 and FOUR[:64] not in data


# -- what a request must carry ---------------------------------------------------------------

@pytest.mark.parametrize("head, status", [
    (b"GET /hello.txt HTTP/1.1\r\n", 400),
    (b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n", 400),
    (b"GET /hello.txt HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n", 400),
    (b"GET /hello.txt HTTP/1.0\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n", 400),
    (b"GET /hello.txt HTTP/1.0\r\n", 200),
    (b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n", 200),
    (b"GET /hello.txt HTTP/1.1\r\nHost:\r\n", 200),  # empty, as RFC 9112 3.2 allows
], ids=["http-1.1-no-host", "two-hosts", "two-different-hosts", "http-1.0-two-hosts",
        "http-1.0-no-host", "one-host", "empty-host"])
def test_host_header_rfc_9112_section_3_2(served, head, status):
    mark = served.mark()
    response = parse(served.exchange(head + b"Connection: close\r\n\r\n"))
    assert response.status == status
    assert (response.body == b"hello\n") is (status == 200)
    served.get("/hello.txt")  # and it goes on serving
    _no_traceback(served.since(mark))


# -- the Server header -----------------------------------------------------------------------

SERVER_HEADER = f"fastwrap/{fastwrap.__version__}"
ANSWERS = {
    "file": (request("GET", "/four.bin"), 200),
    "range": (request("GET", "/big.bin", [("Range", "bytes=0-9")]), 206),
    "not-modified": (request("GET", "/four.bin", [("If-None-Match", "*")]), 304),
    "head": (request("HEAD", "/big.bin"), 200),
    "listing": (request("GET", "/"), 200),
    "redirect": (request("GET", "/sub"), 301),
    "missing": (request("GET", "/missing"), 404),
    "method": (request("POST", "/four.bin"), 405),
    "unsatisfiable": (request("GET", "/four.bin", [("Range", "bytes=9999-")]), 416),
    "traversal": (request("GET", "/../etc/passwd"), 400),
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "http-2": (b"GET / HTTP/2.0\r\n\r\n", 505),
    "too-long": (b"GET /" + b"a" * 65537, 414),
}


@pytest.mark.parametrize("raw, status", list(ANSWERS.values()), ids=list(ANSWERS))
def test_every_response_names_fastwrap_as_the_server(served, raw, status):
    method = raw.split(b" ", 1)[0].decode("latin-1")
    response = parse(served.exchange(raw), method)
    assert response.status == status
    assert response.header("Server") == SERVER_HEADER


def test_parallel_downloads_are_each_byte_exact(served):
    def fetch(i: int) -> bytes:
        response, body = served.get(f"/big.bin?parallel={i}")
        assert response.status == 200
        return body

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(fetch, range(12)))
    assert all(body == BIG for body in bodies)


# -- stopping --------------------------------------------------------------------------------

def test_interrupt_stops_the_server_cleanly(engine, root):
    server = ServeProcess(engine, root, "--quiet")
    assert server.get("/hello.txt")[1] == b"hello\n"
    server.interrupt()
    assert server.proc.wait(10) == 0
    server.stop()
    assert server.lines[-1] == "Interrupted: stopping."
    _no_traceback(server.lines)


def test_interrupt_stops_promptly_with_an_idle_keep_alive_connection_open(engine, root):
    server = ServeProcess(engine, root, "--quiet")
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as idle:
            idle.sendall(request("GET", "/hello.txt", close=False))
            assert idle.recv(65536).endswith(b"hello\n")
            # The connection stays open and idle, as a browser's does.
            server.interrupt()
            started = time.monotonic()
            try:
                code = server.proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, (f"still running {time.monotonic() - started:.1f} s after "
                               "Ctrl-C, while a keep-alive connection was idle")
    finally:
        server.stop()


# -- bad input -------------------------------------------------------------------------------

#: Names of the code that a user's message must not show.
INTERNAL_NAMES = ("_port", "_threads", "StaticFiles")


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fastwrap serve: "), lines[0]
    assert not [name for name in INTERNAL_NAMES if name in lines[0]], lines[0]
    return lines[0]


def test_missing_directory_is_a_one_line_error(engine, tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = run_cli(engine, "serve", str(missing), "--port", "0")
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert str(missing) in line and "no such directory" in line


def test_file_instead_of_a_directory_is_a_one_line_error(engine, tmp_path):
    path = tmp_path / "file.txt"
    path.write_bytes(b"x")
    proc = run_cli(engine, "serve", str(path), "--port", "0")
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert str(path) in line and "not a directory" in line


@pytest.mark.parametrize("number", ["8080", "0"])
def test_a_port_given_as_http_servers_positional_argument_gets_a_hint(engine, tmp_path, number):
    # `python -m http.server 8080` serves the current directory on port 8080;
    # fastwrap takes DIR there, and says so instead of "no such directory".
    proc = run_cli(engine, "serve", number, cwd=tmp_path)
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert f"-p {number}" in line and repr(number) in line


def test_a_numeric_name_of_an_existing_directory_is_served(engine, tmp_path):
    (tmp_path / "8080").mkdir()
    (tmp_path / "8080" / "hello.txt").write_bytes(b"hello\n")
    server = ServeProcess(engine, Path("8080"), cwd=tmp_path)
    try:
        assert server.match["root"] == os.path.realpath(tmp_path / "8080")
        assert server.get("/hello.txt")[1] == b"hello\n"
    finally:
        server.stop()


@pytest.mark.parametrize("option", ["-d", "--directory"])
def test_directory_option_as_http_server_has_it(engine, root, tmp_path, option):
    server = ServeProcess(engine, None, option, str(root), cwd=tmp_path)
    try:
        assert server.match["root"] == os.path.realpath(root)
        response, body = server.get("/hello.txt")
        assert (response.status, body) == (200, b"hello\n")
    finally:
        server.stop()


def test_directory_given_twice_is_a_usage_error(engine, root, tmp_path):
    proc = run_cli(engine, "serve", str(root), "-d", str(tmp_path), "--port", "0", timeout=20)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fastwrap serve: error: ") and "-d" in last, proc.stderr


def test_port_in_use_is_a_one_line_error_naming_it_and_suggesting_port_0(engine, root):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = run_cli(engine, "serve", str(root), "--port", str(port))
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "in use" in line.lower() and f"127.0.0.1:{port}" in line and "-p 0" in line


def test_address_not_on_this_host_is_a_one_line_error_naming_it(engine, root):
    proc = run_cli(engine, "serve", str(root), "--bind", "192.0.2.1", "--port", "8123")
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "192.0.2.1:8123" in line and "--bind" in line


def test_unknown_host_name_is_a_one_line_error_naming_it(engine, root):
    proc = run_cli(engine, "serve", str(root), "--bind", "no-such-host.invalid", "--port", "0")
    assert proc.returncode == 1
    assert "no-such-host.invalid" in _one_line_error(proc)


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], ["port", "70000"]),
    (["--port", "-1"], ["port"]),
    (["--port", "http"], ["port", "http"]),
    (["--threads", "0"], ["threads", "0"]),
    (["--threads", "-4"], ["threads", "-4"]),
    (["--threads", "many"], ["threads", "many"]),
])
def test_bad_option_value_is_a_usage_error(engine, root, args, words):
    proc = run_cli(engine, "serve", str(root), *args, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last, proc.stderr
    for word in words:
        assert word in last, (word, last)
    assert not [name for name in INTERNAL_NAMES if name in proc.stderr], proc.stderr


# -- curl ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed")
    return path


def _curl(curl: str, url: str, tmp_path: Path, *options: str) -> tuple:
    """(status, headers text, body) of one curl request."""
    out, head = tmp_path / unique("body-"), tmp_path / unique("head-")
    proc = subprocess.run([curl, "-sS", "--max-time", "20", "-o", str(out), "-D", str(head),
                           "-w", "%{http_code}", *options, url],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    body = out.read_bytes() if out.exists() else b""
    return int(proc.stdout), head.read_text("latin-1"), body


def _header(head: str, name: str) -> str:
    found = re.findall(rf"^{name}: (.*?)\r?$", head, re.IGNORECASE | re.MULTILINE)
    assert len(found) == 1, (name, head)
    return found[0]


def test_curl_fetches_a_file(served, curl, tmp_path):
    status, head, body = _curl(curl, f"http://127.0.0.1:{served.port}/big.bin", tmp_path)
    assert (status, body) == (200, BIG)
    assert _header(head, "Content-Length") == str(len(BIG))


def test_curl_fetches_a_range(served, curl, tmp_path):
    status, head, body = _curl(curl, f"http://127.0.0.1:{served.port}/big.bin", tmp_path,
                               "-r", "1048576-1048675")
    assert (status, body) == (206, BIG[1048576:1048676])
    assert _header(head, "Content-Range") == f"bytes 1048576-1048675/{len(BIG)}"


def test_curl_gets_304_for_its_etag_and_its_date(served, curl, tmp_path):
    url = f"http://127.0.0.1:{served.port}/four.bin"
    status, head, _ = _curl(curl, url, tmp_path)
    etag, modified = _header(head, "ETag"), _header(head, "Last-Modified")
    status, head, body = _curl(curl, url, tmp_path, "-H", f"If-None-Match: {etag}")
    assert (status, body) == (304, b"")
    assert _header(head, "ETag") == etag
    status, head, body = _curl(curl, url, tmp_path, "-z", modified)
    assert (status, body) == (304, b"")
    # The README's line: HEAD with the ETag.
    status, head, _ = _curl(curl, url, tmp_path, "-I", "-H", f"If-None-Match: {etag}")
    assert status == 304
    assert _header(head, "ETag") == etag


def test_curl_resumes_a_download(served, curl, tmp_path):
    out = tmp_path / "partial.bin"
    out.write_bytes(BIG[:777_777])
    proc = subprocess.run([curl, "-sS", "--max-time", "20", "-C", "-", "-o", str(out),
                           f"http://127.0.0.1:{served.port}/big.bin"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == BIG
