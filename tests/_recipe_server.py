"""The README's recipe for server authors, run as written, in a minimal HTTP/1.1 server.

``python _recipe_server.py DIRECTORY`` prints "PORT IMPLEMENTATION" and serves
keep-alive connections on 127.0.0.1, one thread each.  Every response goes
through the code block of README.rst's "How a server author adopts fastwrap",
read from the README as it stands, with the names its text gives.

The application answers ``/NAME`` with DIRECTORY/NAME in a FileWrapper;
``/pipe/NAME`` gives the same bytes through a pipe, whose size cannot be
known; ``?content-length=V`` makes it declare ``Content-Length: V``.
"""
from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, List, Tuple
from urllib.parse import parse_qs

import fastwrap

README = Path(__file__).resolve().parent.parent / "README.rst"
SECTION = "How a server author adopts fastwrap"


def recipe() -> str:
    """The first Python code block of the README's section for server authors."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(".. code-block:: python", lines.index(SECTION)) + 1
    block = []
    for line in lines[start:]:
        if line and not line[0].isspace():
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def _pipe_of(data: bytes) -> Any:
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "wb") as pipe:
            pipe.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return open(read_end, "rb")


def app(root: Path) -> Callable:
    def application(environ: dict, start_response: Callable) -> Any:
        name = environ["PATH_INFO"].lstrip("/")
        headers = [("Content-Type", "application/octet-stream")]
        for value in parse_qs(environ["QUERY_STRING"]).get("content-length", []):
            headers.append(("Content-Length", value))
        if name.startswith("pipe/"):
            source = _pipe_of((root / name[len("pipe/"):]).read_bytes())
        else:
            source = open(root / name, "rb")
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](source)

    return application


def render(status: str, headers: List[Tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def serve_connection(conn: socket.socket, code: Any, application: Callable) -> None:
    with conn, conn.makefile("rb") as requests:
        while True:
            line = requests.readline(65537)
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            fields = []
            while True:
                field = requests.readline(65537)
                if field in (b"\r\n", b"\n", b""):
                    break
                fields.append(field.strip().lower())
            closing = [b"connection: close" in fields]
            path, _, query = target.partition("?")
            environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                       "wsgi.file_wrapper": fastwrap.FileWrapper}
            started: dict = {}

            def start_response(status: str, headers: list, exc_info: Any = None) -> None:
                started.update(status=status, headers=list(headers))

            result = application(environ, start_response)
            try:
                exec(code, {"result": result, "method": method, "conn": conn,
                            "render": render, **started,
                            "close_connection_after_this_response": lambda: closing.append(True)})
            finally:
                result.close()
            if any(closing):
                return


def main(directory: str) -> None:
    code = compile(recipe(), f"{README.name} ({SECTION})", "exec")
    application = app(Path(directory))
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], fastwrap.IMPLEMENTATION, flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, code, application),
                         daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1])
