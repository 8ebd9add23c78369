"""The README's recipe for server authors works as written, over real sockets.

tests/_recipe_server.py runs the code block of "How a server author adopts
fastwrap", taken from README.rst, in a minimal keep-alive HTTP/1.1 server (a
child process per engine); these tests check the framing it gives.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from _static_support import Response, ResponseReader, engine_env, parse, pipelined, request
from _support import HANG, random_bytes, recv_until_eof

DATA = random_bytes(300_000, seed=93)
TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not (TESTS.parent / "README.rst").is_file(),
                                reason="the README is not beside the tests")


@pytest.fixture(scope="module")
def port(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("recipe")
    (root / "data.bin").write_bytes(DATA)
    log = root / "server.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen([sys.executable, str(TESTS / "_recipe_server.py"), str(root)],
                                  env=engine_env(engine), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        banner = server.stdout.readline().split()
        assert len(banner) == 2, log.read_text()
        assert banner[1] == engine.IMPLEMENTATION
        yield int(banner[0])
    finally:
        server.terminate()
        server.wait(HANG)
        server.stdout.close()
    assert "Traceback" not in log.read_text(), log.read_text()


def until_closed(port: int, raw: bytes) -> bytes:
    """Send *raw* and read until the server closes: only a server that closes returns."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        sock.sendall(raw)
        return recv_until_eof(sock)


def test_keeps_the_applications_content_length_and_adds_one_where_none_parses(port):
    responses, rest = pipelined(port, [
        ("GET", request("GET", "/data.bin", close=False)),
        ("HEAD", request("HEAD", "/data.bin", close=False)),
        ("GET", request("GET", "/data.bin?content-length=1000", close=False)),
        ("GET", request("GET", "/data.bin?content-length=soon")),
    ])
    whole, head, declared, unparsable = responses
    for response in (whole, head, unparsable):  # header() fails on a second Content-Length
        assert response.header("Content-Length") == str(len(DATA))
    assert declared.header("Content-Length") == "1000"
    assert [whole.body, head.body, declared.body, unparsable.body] == [DATA, b"", DATA[:1000],
                                                                       DATA]
    for response in responses:  # one connection carried all four: each was framed right
        assert response.status == 200
        assert response.header("Transfer-Encoding") is None
        assert response.header("Connection") is None
    assert rest == b""


def test_a_body_of_unknown_length_ends_with_the_connection(port):
    response = parse(until_closed(port, request("GET", "/pipe/data.bin", close=False)))
    assert response.header("Content-Length") is None
    assert response.header("Transfer-Encoding") is None
    assert response.header("Connection") == "close"
    assert response.body == DATA


def test_a_file_short_of_its_content_length_closes_the_connection(port):
    promised = len(DATA) + 1000
    received = until_closed(port, request("GET", f"/data.bin?content-length={promised}",
                                          close=False))
    head, _, body = received.partition(b"\r\n\r\n")
    response: Response = ResponseReader.of_bytes(head + b"\r\n\r\n").read("HEAD")
    assert response.header("Content-Length") == str(promised)
    assert body == DATA
