"""Real uvicorn and hypercorn processes on 127.0.0.1, and a plain HTTP/1.1 client.

``with serve_uvicorn(http="fastwrap-httptools", loop="uvloop") as server:``
starts ``python -m uvicorn`` (or ``uvicorn.run(...)`` with the protocol
class, ``programmatic=True``) serving ``_asgi_apps:app`` from this directory,
waits until ``GET /__stats__`` answers, and stops it at exit.
``serve_hypercorn(worker="uvloop")`` does the same with ``python -m
fastwrap.hypercorn`` (or stock ``python -m hypercorn``, ``stock=True``).

The client side is deliberately low-level (a socket and a reader that keeps
every byte it consumed), so that tests see the framing exactly as sent:
Content-Length, chunks, what follows a response, where the server closed.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import fastwrap

TESTS = Path(__file__).resolve().parent
SRC = Path(fastwrap.__file__).resolve().parents[1]

#: --http values: fastwrap's classes by import string, uvicorn's by name.
HTTP = {
    "fastwrap-httptools": "fastwrap.uvicorn:HttpToolsProtocol",
    "fastwrap-h11": "fastwrap.uvicorn:H11Protocol",
    "stock-httptools": "httptools",
    "stock-h11": "h11",
}
START_TIMEOUT = 30.0
IO_TIMEOUT = 60.0


class Server:
    def __init__(self, port: int, process: Optional[subprocess.Popen], log: Optional[Path],
                 tls: Optional[ssl.SSLContext]) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.process = process
        self.log = log
        self.tls = tls  # the client's context, for a TLS server
        self.worker_pid: Optional[int] = None  # where a server runs its worker in a child
        self.parser: Optional[str] = None  # uvicorn's HTTP parser, where a test names it

    def connect(self, rcvbuf: Optional[int] = None) -> "Connection":
        return Connection(self, rcvbuf)

    def request(self, method: str, target: str, headers: Sequence[str] = ()) -> "Response":
        """One request on a new connection that asks to close."""
        with self.connect() as conn:
            conn.send_request(method, target, [*headers, "Connection: close"])
            return conn.read_response(method)

    def stats(self) -> Dict[str, Any]:
        response = self.request("GET", "/__stats__")
        assert response.status == 200, response
        result: Dict[str, Any] = json.loads(response.body)
        return result

    def open_fds(self) -> int:
        """Descriptors open in the process serving requests (a worker of its own, if any)."""
        pid = self.worker_pid
        if pid is None:
            assert self.process is not None
            pid = self.process.pid
        return len(os.listdir(f"/proc/{pid}/fd"))

    def log_text(self) -> str:
        assert self.log is not None
        return self.log.read_text(errors="replace")


class Response:
    def __init__(self, status: int, head: bytes, headers: List[Tuple[str, str]], body: bytes,
                 complete: bool) -> None:
        self.status = status
        self.head = head
        self.headers = headers
        self.body = body
        self.complete = complete  # False: the connection ended inside the body

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes {self.headers}>"


class Connection:
    """One client connection; keeps every byte it read in ``raw``."""

    def __init__(self, server: Server, rcvbuf: Optional[int] = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(IO_TIMEOUT)
        sock.connect((server.host, server.port))
        if server.tls is not None:
            sock = server.tls.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buffer = bytearray()
        self.raw = bytearray()
        self.eof = False

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(self, method: str, target: str, headers: Sequence[str] = (),
                     version: str = "HTTP/1.1", body: bytes = b"") -> None:
        lines = [f"{method} {target} {version}", "Host: 127.0.0.1", *headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    # -- reading -------------------------------------------------------------------------

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(1 << 18)
        except (ssl.SSLEOFError, ConnectionResetError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        self.raw += data
        return data

    def readline(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                return self._take(len(self.buffer))
        return self._take(self.buffer.index(b"\r\n") + 2)

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n and self._fill():
            pass
        return self._take(min(n, len(self.buffer)))

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        return self._take(len(self.buffer))

    def read_response(self, method: str = "GET") -> Response:
        start = len(self.raw)
        status_line = self.readline()
        assert status_line.startswith(b"HTTP/1."), f"not a response: {status_line!r}"
        status = int(status_line.split()[1])
        headers: List[Tuple[str, str]] = []
        while True:
            line = self.readline()
            assert line, "the connection closed inside the head"
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        head = bytes(self.raw[start:])
        response = Response(status, head, headers, b"", True)
        if method == "HEAD" or status in (204, 304) or status < 200:
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            response.body, response.complete = self._read_chunked()
        elif response.header("content-length") is not None:
            length = int(response.header("content-length") or 0)
            response.body = self.read(length)
            response.complete = len(response.body) == length
        else:
            response.body = self.read_to_eof()
        return response

    def _read_chunked(self) -> Tuple[bytes, bool]:
        body = bytearray()
        while True:
            size_line = self.readline()
            if not size_line.endswith(b"\r\n"):
                return bytes(body), False
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while self.readline() not in (b"\r\n", b""):
                    pass  # trailers
                return bytes(body), True
            piece = self.read(size)
            body += piece
            if len(piece) < size or self.read(2) != b"\r\n":
                return bytes(body), False


# -- the server process ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_env(engine: str) -> Dict[str, str]:
    """The server's environment for *engine* ("c" or "pure")."""
    return {"FASTWRAP_NO_EXTENSIONS": "1" if engine == "pure" else "0"}


_PROGRAMMATIC = """
import sys, uvicorn, fastwrap.uvicorn
port, loop, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
kwargs = dict(host="127.0.0.1", port=port, loop=loop, http=getattr(fastwrap.uvicorn, name),
              log_level="debug", access_log=False)
if len(sys.argv) > 4:
    kwargs.update(ssl_certfile=sys.argv[4], ssl_keyfile=sys.argv[5])
uvicorn.run("_asgi_apps:app", **kwargs)
"""


@contextlib.contextmanager
def serve_uvicorn(http: str = "fastwrap-httptools", loop: str = "asyncio",
                  engine: str = "c", data_dir: Optional[Path] = None,
                  tls: Optional[Any] = None, programmatic: bool = False,
                  app_ref: str = "_asgi_apps:app", cwd: Optional[Path] = None,
                  file_permissions: bool = False,
                  env: Optional[Dict[str, str]] = None) -> Iterator[Server]:
    """Run uvicorn serving *app_ref* in *cwd* (default: this directory); yield a :class:`Server`.

    *tls* is a trustme CA: the server gets a certificate it issued, and the
    client side trusts it.  *file_permissions*: the server is denied files
    their mode denies it, even when it runs as root (see :func:`_obey_file_modes`).
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastwrap-uvicorn-") as scratch:
        tls_args, client_context = _certificate(tls, scratch)
        if programmatic:
            name = HTTP[http].rsplit(":", 1)[1]
            args = [sys.executable, "-c", _PROGRAMMATIC, str(port), loop, name, *tls_args]
        else:
            args = [sys.executable, "-m", "uvicorn", app_ref, "--host", "127.0.0.1",
                    "--port", str(port), "--http", HTTP[http], "--loop", loop,
                    "--log-level", "debug", "--no-access-log"]
            if tls_args:
                args += ["--ssl-certfile", tls_args[0], "--ssl-keyfile", tls_args[1]]
        with _started(args, port, scratch, engine, data_dir, cwd, file_permissions,
                      client_context, env) as server:
            yield server


_PROGRAMMATIC_HYPERCORN = """
import asyncio, sys, fastwrap.hypercorn
from hypercorn.config import Config
from _asgi_apps import app
config = Config()
config.bind = ["127.0.0.1:" + sys.argv[1]]
config.loglevel, config.errorlog = "DEBUG", "-"
if sys.argv[2] == "uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
asyncio.run(fastwrap.hypercorn.serve(app, config))
"""


@contextlib.contextmanager
def serve_hypercorn(worker: str = "asyncio", engine: str = "c", stock: bool = False,
                    data_dir: Optional[Path] = None, tls: Optional[Any] = None,
                    cwd: Optional[Path] = None, file_permissions: bool = False,
                    workers: int = 1, env: Optional[Dict[str, str]] = None,
                    programmatic: bool = False,
                    app_ref: str = "_asgi_apps:app") -> Iterator[Server]:
    """Run ``python -m fastwrap.hypercorn`` (stock: ``python -m hypercorn``); yield a :class:`Server`.

    *worker* is hypercorn's ``--worker-class``; with *workers* >= 1 (hypercorn's
    default, 1) the requests are served by a worker process hypercorn spawns,
    whose pid ``server.worker_pid`` holds.  *env* adds to the server's environment.
    *programmatic*: ``asyncio.run(fastwrap.hypercorn.serve(app, config))`` on
    *worker*'s loop instead.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastwrap-hypercorn-") as scratch:
        tls_args, client_context = _certificate(tls, scratch)
        args = [sys.executable, "-m", "hypercorn" if stock else "fastwrap.hypercorn", app_ref,
                "--bind", f"127.0.0.1:{port}", "--worker-class", worker,
                "--workers", str(workers), "--log-level", "debug", "--error-logfile", "-"]
        if programmatic:
            args = [sys.executable, "-c", _PROGRAMMATIC_HYPERCORN, str(port), worker]
        if tls_args:
            args += ["--certfile", tls_args[0], "--keyfile", tls_args[1]]
        with _started(args, port, scratch, engine, data_dir, cwd, file_permissions,
                      client_context, env) as server:
            server.worker_pid = int(server.stats()["pid"])
            yield server


def _certificate(tls: Optional[Any], scratch: str) -> Tuple[List[str], Optional[ssl.SSLContext]]:
    """For a trustme CA: the server's certificate and key files, and the client's context."""
    if tls is None:
        return [], None
    cert = tls.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = os.path.join(scratch, "cert.pem"), os.path.join(scratch, "key.pem")
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    client_context = ssl.create_default_context()
    tls.configure_trust(client_context)
    return [certfile, keyfile], client_context


@contextlib.contextmanager
def _started(args: List[str], port: int, scratch: str, engine: str, data_dir: Optional[Path],
             cwd: Optional[Path], file_permissions: bool, client_context: Optional[ssl.SSLContext],
             env: Optional[Dict[str, str]] = None) -> Iterator[Server]:
    """Start *args* in a session of its own; yield it once it answers; stop it by its pid."""
    environ = {k: v for k, v in os.environ.items() if k != "FASTWRAP_DISABLE"}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), str(SRC), os.environ.get("PYTHONPATH")) if p)
    environ.update(engine_env(engine))
    if data_dir is not None:
        environ["FASTWRAP_TEST_DIR"] = str(data_dir)
    environ.update(env or {})
    log = Path(scratch) / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(args, cwd=cwd or TESTS, env=environ, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_obey_file_modes if file_permissions else None)
    server = Server(port, process, log, client_context)
    try:
        _wait_until_answering(server)
        yield server
    finally:
        _stop(process)


#: capabilities(7): what lets root read and search whatever the file modes say.
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_PR_CAPBSET_DROP = 24


def _obey_file_modes() -> None:
    """In the child before exec: as root, give up reading past file modes.

    Dropped from the bounding set, the two capabilities are not granted again
    when the server's program is executed, so a file of mode 000 is as
    unreadable to it as to any other user.  Any other user obeys modes anyway.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl(PR_CAPBSET_DROP): {os.strerror(error)}")


def _wait_until_answering(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert server.process is not None
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n"
                               + server.log_text()[-4000:])
        try:
            server.stats()
            return
        except (OSError, AssertionError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {START_TIMEOUT} s:\n"
                                   + server.log_text()[-4000:]) from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)
