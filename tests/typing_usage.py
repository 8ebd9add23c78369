"""How applications and servers use fastwrap, written to be checked by mypy --strict.

Not collected by pytest (no test_ prefix); tests/test_typing.py runs mypy
over it and over the package, so the public API's types stay usable.
"""
from __future__ import annotations

import io
import socket
from typing import Callable, Iterable, List, Optional, Tuple

import fastwrap
from fastwrap import serving


def app(environ: dict[str, object],
        start_response: Callable[[str, List[Tuple[str, str]]], object]) -> Iterable[bytes]:
    wrapper = environ["wsgi.file_wrapper"]
    assert callable(wrapper)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    result: Iterable[bytes] = wrapper(io.BytesIO(b"body"), 8192)
    return result


def serve(conn: socket.socket, path: str, head: bytes) -> int:
    with open(path, "rb") as f:
        wrapper = fastwrap.FileWrapper(f, blksize=65536)
        position: int = wrapper.tell()
        wrapper.seek(position)
        sent: int = wrapper.transmit(conn, count=None, headers=head)
        return sent


def respond(conn: socket.socket, result: Iterable[bytes], method: str, status: int,
            content_length: Optional[str], head: bytes) -> int:
    response = serving.FileResponse.of(result)
    if response is None:
        return fastwrap.transmit(conn, result, None, headers=head)
    response.prepare()
    framing = serving.frame(response, method, status, content_length)
    body: Iterable[bytes] = response.wrapper if framing.body else ()
    sent = fastwrap.transmit(conn, body, framing.count, headers=head)
    if framing.short(sent) or not framing.delimited:
        conn.close()
    return sent


def step(conn: socket.socket, data: bytes) -> Tuple[int, bool, str]:
    tx = fastwrap.Transmission(data, conn, count=len(data))
    try:
        moved = tx.send()
    except BlockingIOError:
        moved = 0
    finally:
        tx.close()
    paths: Tuple[str, ...] = fastwrap.available_paths()
    chosen: str = fastwrap.select_path(data, conn)
    assert chosen in paths or chosen == "read"
    counts: dict[str, dict[str, int]] = fastwrap.stats()
    return moved + counts["mmap"]["bytes"] - tx.sent, tx.done, tx.path
