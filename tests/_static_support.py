"""What test_static.py and test_serve.py share: a `fastwrap serve` process and raw HTTP.

``ServeProcess`` runs ``python -m fastwrap serve DIR --port 0`` with the engine
under test (``FASTWRAP_NO_EXTENSIONS=1`` for the pure one), waits for its
"Serving ..." line and collects its stderr in a thread, so that a test can
wait for the access-log line of a request it made.  ``exchange`` and
``ResponseReader`` speak HTTP/1.1 over raw sockets, byte for byte, for the
requests http.client would normalise.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from _support import HANG, SRC, python_m

SERVING = re.compile(
    r"^Serving (?P<root>.+) at http://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d+)/ "
    r"\(fastwrap (?P<version>\S+), (?P<engine>\w+) engine, (?P<loop>\w+) loop, "
    r"(?P<threads>\d+) threads(?:, (?P<workers>\d+) workers)?\)$")
#: One access-log line: client, date, request line, status, body bytes sent, path.
ACCESS = re.compile(
    r'^(?P<client>\S+) - - \[(?P<date>[^\]]+)\] "(?P<request>[^"]*)" '
    r"(?P<status>\d{3}) (?P<size>\d+|-) (?P<path>\S+)$")


def engine_env(engine: Any, **extra: str) -> dict:
    """The environment of a child that imports fastwrap from src/ with *engine*."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    if engine.IMPLEMENTATION == "python":
        env["FASTWRAP_NO_EXTENSIONS"] = "1"
    env.update(extra)
    return env


def run_cli(engine: Any, *args: str, cwd: Optional[Path] = None,
            timeout: float = HANG) -> subprocess.CompletedProcess:
    """``python -m fastwrap ARGS`` to its end, with *engine*."""
    return subprocess.run([sys.executable, "-m", "fastwrap", *args], env=engine_env(engine),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


class ServeProcess:
    """``python -m fastwrap serve`` in a child process, its stderr collected line by line."""

    def __init__(self, engine: Any, directory: Optional[Path], *options: str,
                 cwd: Optional[Path] = None, bind: str = "127.0.0.1",
                 command: Optional[List[str]] = None, new_session: bool = False) -> None:
        """*command*, when given, runs instead of ``fastwrap serve`` (a stand-in that
        prints the same lines); *new_session* puts it in a process group of its own."""
        self.engine = engine
        argv = python_m("fastwrap", "serve")  # stop() interrupts it
        if directory is not None:
            argv.append(str(directory))
        argv += ["--bind", bind, "--port", "0", *options]
        if command is not None:
            argv = command
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(argv, env=engine_env(engine), cwd=cwd or directory,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     start_new_session=new_session)
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        try:
            self.serving = self.wait_for(lambda line: line.startswith("Serving "))
        except BaseException:
            self.stop()
            raise
        match = SERVING.match(self.serving)
        assert match, f"unexpected first line: {self.serving!r}"
        self.match = match
        self.host = match["host"].strip("[]")
        self.port = int(match["port"])

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # -- what it printed ---------------------------------------------------------------

    def mark(self) -> int:
        """A bookmark in the log: pass it to since()."""
        with self._cond:
            return len(self.lines)

    def since(self, mark: int) -> List[str]:
        with self._cond:
            return list(self.lines[mark:])

    def wait_for(self, predicate: Any, timeout: float = HANG, start: int = 0) -> str:
        """The first line from *start* on that satisfies *predicate*, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if predicate(line):
                        return line
                if self._eof:
                    raise AssertionError(
                        f"fastwrap serve ended (exit {self.proc.poll()}) without the line; "
                        f"it printed: {self.lines!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such line after {timeout} s in {self.lines!r}")
                self._cond.wait(left)

    def access_line(self, tag: str, start: int = 0, timeout: float = HANG) -> "re.Match[str]":
        """The access-log line of the request whose target contains *tag*, parsed."""
        line = self.wait_for(lambda l: ACCESS.match(l) is not None and tag in l,
                             timeout=timeout, start=start)
        match = ACCESS.match(line)
        assert match is not None
        return match

    # -- talking to it ---------------------------------------------------------------

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, target: str, headers: Optional[dict] = None,
            method: str = "GET") -> Tuple[http.client.HTTPResponse, bytes]:
        """One request on a fresh connection through http.client: (response, body)."""
        conn = self.connection()
        try:
            conn.request(method, target, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def exchange(self, raw: bytes, timeout: float = 10) -> bytes:
        return exchange(self.port, raw, timeout=timeout, host=self.host)

    # -- ending it -------------------------------------------------------------------

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Ctrl-C, then kill if it does not end; wait for the reader."""
        if self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(HANG)
        self._reader.join(HANG)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def exchange(port: int, raw: bytes, timeout: float = 10, host: str = "127.0.0.1") -> bytes:
    """Send *raw* on a new connection, half-close, and return every byte until EOF."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


def request(method: str, target: "str | bytes", headers: Sequence[Tuple[str, str]] = (),
            close: bool = True) -> bytes:
    """An HTTP/1.1 request with the target exactly as given (no normalising)."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class Response:
    status: int
    reason: str
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        """The one value of header *name* (None when absent; two is an error)."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    def names(self) -> List[str]:
        return [k.lower() for k, _ in self.headers]


class ResponseReader:
    """Reads consecutive HTTP/1.1 responses from one byte stream (a keep-alive socket)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    @classmethod
    def of_bytes(cls, data: bytes) -> "ResponseReader":
        return cls(io.BytesIO(data))

    def read(self, method: str = "GET") -> Response:
        line = self.stream.readline(65537)
        assert line.startswith(b"HTTP/1."), f"not a status line: {line[:200]!r}"
        _, status, reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        response = Response(int(status), reason)
        while True:
            line = self.stream.readline(65537)
            assert line, "the connection ended inside the headers"
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            response.headers.append((name, value.strip()))
        if method == "HEAD" or response.status in (204, 304) or response.status < 200:
            return response
        length = response.header("Content-Length")
        if length is None:
            response.body = self.stream.read()
            return response
        body = self.stream.read(int(length))
        assert len(body) == int(length), (len(body), length)
        response.body = body
        return response

    def rest(self) -> bytes:
        return self.stream.read()


def parse(data: bytes, method: str = "GET") -> Response:
    """The one response in *data*, which must hold nothing after it."""
    reader = ResponseReader.of_bytes(data)
    response = reader.read(method)
    assert reader.rest() == b"", "bytes after the response"
    return response


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def pipelined(port: int, requests: Iterable[Tuple[str, bytes]], timeout: float = 10
              ) -> Tuple[List[Response], bytes]:
    """Send every request at once on one connection; read the answers in order.

    *requests* are (method, raw request) pairs; the last should close the
    connection.  Returns the responses and whatever came after them.
    """
    requests = list(requests)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(raw for _, raw in requests))
        stream = sock.makefile("rb")
        reader = ResponseReader(stream)
        responses = [reader.read(method) for method, _ in requests]
        return responses, reader.rest()
