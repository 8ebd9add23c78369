"""ASGI apps served by real uvicorn processes in test_uvicorn.py (and gunicorn's UvicornWorker).

``app`` dispatches on the path's first segment:

- ``/fastapi/...``: a FastAPI app (``FileResponse`` from a route, by an
  absolute path or one relative to the working directory);
- ``/raw/...``: a bare ASGI app using ``http.response.zerocopysend`` and
  ``http.response.pathsend`` directly (with its ``offset``, ``count`` and
  ``more_body`` fields on ``/raw/parts``), with the cases Starlette never sends
  (and ``/raw/fail``, failing before it starts a response: uvicorn's own 500),
  and the sources an event loop must wait for (an empty pipe, a cold file);
- anything else: a Starlette app (``FileResponse``, ``StaticFiles`` with its
  304 and Range answers, and a few non-file responses to compare with stock
  uvicorn); ``/stale/...`` answers a ``FileResponse`` given the stat of
  another file, as if the file had changed after Starlette looked at it
  (StaticFiles passes its own stat the same way).

``GET /__stats__`` answers this process's ``fastwrap.stats()`` plus what the
raw app observed (disconnects reported by ``receive()``, file positions, and
for the waiting sources the engine's steps and where the disk was read).
The files live in ``$FASTWRAP_TEST_DIR``.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import threading
from typing import Any, Callable, Dict, Iterator, List
from urllib.parse import parse_qs

import fastwrap
import fastwrap.asyncio
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

DIRECTORY = os.environ.get("FASTWRAP_TEST_DIR", os.getcwd())

if os.environ.get("FASTWRAP_TEST_STARLETTE_INSTALL"):
    # As under fastwrap's servers, here under a stock one (which advertises no ranges).
    import fastwrap.starlette
    fastwrap.starlette.install()

#: What the raw app saw, reported by /__stats__.
OBSERVED: Dict[str, Any] = {"disconnects": 0, "positions": [], "waits": []}


def _file(name: str) -> str:
    return os.path.join(DIRECTORY, name)


# -- Starlette --------------------------------------------------------------------------

async def file_route(request: Request) -> Response:
    return FileResponse(_file(request.path_params["name"]))


async def relative_route(request: Request) -> Response:
    return FileResponse(request.path_params["name"])  # as FastAPI's docs write it


async def stale_route(request: Request) -> Response:
    """The file as Starlette saw it (``?stat=``) is not the file sent."""
    seen = os.stat(_file(request.query_params.get("stat", "data.bin")))
    return FileResponse(_file(request.path_params["name"]), stat_result=seen)


async def plain(request: Request) -> Response:
    return PlainTextResponse("hello from uvicorn\n")


async def stream(request: Request) -> Response:
    async def pieces() -> Any:
        for piece in (b"one,", b"two,", b"three"):
            yield piece
    return StreamingResponse(pieces(), media_type="text/plain")


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


starlette_app = Starlette(routes=[
    Route("/file/{name}", file_route, methods=["GET", "HEAD"]),
    Route("/rel/{name}", relative_route),
    Route("/stale/{name}", stale_route),
    Route("/plain", plain, methods=["GET", "HEAD"]),
    Route("/stream", stream),
    Route("/echo", echo, methods=["POST"]),
    Mount("/static", StaticFiles(directory=DIRECTORY)),
])


# -- FastAPI ---------------------------------------------------------------------------

fastapi_app = FastAPI()


@fastapi_app.get("/fastapi/file/{name}")
async def fastapi_file(name: str) -> FileResponse:
    return FileResponse(_file(name))


@fastapi_app.get("/fastapi/rel/{name}")
async def fastapi_relative(name: str) -> FileResponse:
    return FileResponse(name)


# -- a bare ASGI app using the extensions ----------------------------------------------------

def _query(scope: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


def _head(length: Any = None) -> Dict[str, Any]:
    headers = [(b"content-type", b"application/octet-stream")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": 200, "headers": headers}


async def raw_zerocopy(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """One zerocopysend with offset and count; the file's position must not move."""
    q = _query(scope)
    offset, count = int(q["offset"]), int(q["count"])
    with open(_file(q.get("name", "data.bin")), "rb") as f:
        f.seek(7)
        await send(_head(q.get("cl", count)))
        await send({"type": "http.response.zerocopysend", "file": f, "offset": offset,
                    "count": count})
        OBSERVED["positions"].append(f.tell())


async def raw_descriptor(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """zerocopysend of a bare descriptor, from its position, in two messages."""
    q = _query(scope)
    start, count = int(q["start"]), int(q["count"])
    fd = os.open(_file("data.bin"), os.O_RDONLY)
    try:
        os.lseek(fd, start, os.SEEK_SET)
        await send(_head(2 * count))
        await send({"type": "http.response.zerocopysend", "file": fd, "count": count,
                    "more_body": True})
        await send({"type": "http.response.zerocopysend", "file": fd, "count": count})
        OBSERVED["positions"].append(os.lseek(fd, 0, os.SEEK_CUR))
    finally:
        os.close(fd)


MIXED = [("body", b"<begin>"), ("file", 0, 1000), ("body", b"<middle>"),
         ("file", 5000, 70000), ("file", 1000, 1), ("body", b""), ("body", b"<end>")]


def mixed_expected(data: bytes) -> bytes:
    return b"".join(p[1] if p[0] == "body" else data[p[1]:p[1] + p[2]] for p in MIXED)


async def raw_mixed(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """zerocopysend chunks with more_body, mixed with ordinary body messages."""
    chunked = _query(scope).get("chunked") == "1"
    total = sum(len(p[1]) if p[0] == "body" else p[2] for p in MIXED)
    with open(_file("data.bin"), "rb") as f:
        await send(_head(None if chunked else total))
        for i, piece in enumerate(MIXED):
            more = i < len(MIXED) - 1
            if piece[0] == "body":
                await send({"type": "http.response.body", "body": piece[1], "more_body": more})
            else:
                await send({"type": "http.response.zerocopysend", "file": f,
                            "offset": piece[1], "count": piece[2], "more_body": more})


async def raw_pathsend(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """pathsend with the Content-Length the query says ("none": no header).

    ``flush=1`` sends an empty body message first, which puts the head on the wire.
    """
    q = _query(scope)
    path = _file(q.get("name", "data.bin"))
    length = q.get("cl") or str(os.path.getsize(path))
    await send(_head(None if length == "none" else length))
    if q.get("flush"):
        await send({"type": "http.response.body", "body": b"", "more_body": True})
    await send({"type": "http.response.pathsend",
                "path": q["name"] if q.get("relative") else path})


async def raw_parts(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """pathsend with offset and count, one message per part of ``?parts=offset:count,...``.

    Every part but the last carries ``more_body``; ``cl=none`` leaves the
    Content-Length out (chunked), ``cl=N`` announces N; ``flush=1`` puts the
    head out first; ``bad=key:value`` puts a wrong field in the first message.
    """
    q = _query(scope)
    path = _file(q.get("name", "data.bin"))
    parts = [tuple(int(x) for x in part.split(":")) for part in q["parts"].split(",")]
    length = q.get("cl") or str(sum(count for _, count in parts))
    await send(_head(None if length == "none" else length))
    if q.get("flush"):
        await send({"type": "http.response.body", "body": b"", "more_body": True})
    for i, (offset, count) in enumerate(parts):
        message = {"type": "http.response.pathsend", "path": path, "offset": offset,
                   "count": count, "more_body": i < len(parts) - 1}
        if i == 0 and q.get("bad"):
            key, _, value = q["bad"].partition(":")
            message[key] = json.loads(value)
        await send(message)


async def raw_disconnect(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """A big pathsend; afterwards, what receive() says (http.disconnect if the client left)."""
    path = _file("big.bin")
    await send(_head(os.path.getsize(path)))
    await send({"type": "http.response.pathsend", "path": path})
    message = await receive()
    while message["type"] == "http.request":  # hypercorn queues the request's body first
        message = await receive()
    if message["type"] == "http.disconnect":
        OBSERVED["disconnects"] += 1


async def raw_scope(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    extensions = scope.get("extensions") or {}
    body = json.dumps({"extensions": sorted(extensions),
                       "pathsend": extensions.get("http.response.pathsend"),
                       "http_version": scope["http_version"],
                       "scheme": scope["scheme"]}).encode()
    await send(_head(len(body)))
    await send({"type": "http.response.body", "body": body})


async def raw_fail(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    raise RuntimeError("the application failed before starting its response")


# -- sources the loop must wait for -----------------------------------------------------------

#: What /raw/pipe sends: less than a pipe holds, so that its feeder never blocks.
PIPED = bytes(range(256)) * 200


@contextlib.contextmanager
def _watching(observed: Dict[str, Any]) -> Iterator[None]:
    """Count the engine's steps, and note whether each fetch() ran off the loop's thread."""
    real = fastwrap.Transmission
    looked_up = fastwrap.asyncio._Transmission
    loop_thread = threading.get_ident()

    class Watched:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._tx = real(*args, **kwargs)

        def send(self) -> int:
            observed["sends"] += 1
            return int(self._tx.send())

        def fetch(self) -> None:
            observed["off_loop"].append(threading.get_ident() != loop_thread)
            self._tx.fetch()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._tx, name)

    fastwrap.Transmission = fastwrap.asyncio._Transmission = Watched  # type: ignore[misc]
    try:
        yield
    finally:
        fastwrap.Transmission = real  # type: ignore[misc]
        fastwrap.asyncio._Transmission = looked_up
        OBSERVED["waits"].append(observed)


async def _tick(observed: Dict[str, Any]) -> None:
    """Counts the loop's turns while a file is sent: it must keep turning."""
    while True:
        observed["ticks"] += 1
        await asyncio.sleep(0)


def _observation() -> Dict[str, Any]:
    return {"sends": 0, "off_loop": [], "cold_on_loop": 0, "ticks": 0}


class _ReadWatched(io.FileIO):
    """A file whose read() calls note whether they ran off the loop's thread."""

    def __init__(self, path: str, observed: Dict[str, Any]) -> None:
        super().__init__(path, "rb")
        self.observed = observed
        self.loop_thread = threading.get_ident()

    def read(self, size: int = -1) -> bytes:
        on_loop = threading.get_ident() == self.loop_thread
        self.observed["off_loop"].append(not on_loop)
        want = min(size, os.fstat(self.fileno()).st_size - self.tell())
        if on_loop and want > 0 and fastwrap.resident(self, self.tell(), want) < want:
            self.observed["cold_on_loop"] += 1  # the loop is about to wait for the disk
        return super().read(size)


async def raw_pipe(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """zerocopysend of a non-blocking pipe that stays empty for half a second."""
    with_length = _query(scope).get("cl") == "1"
    r, w = os.pipe()
    os.set_blocking(r, False)

    def feed() -> None:
        with open(w, "wb") as pipe:
            pipe.write(PIPED)

    feeder = threading.Timer(0.5, feed)
    with open(r, "rb", buffering=0) as f, _watching(_observation()):
        await send(_head(len(PIPED) if with_length else None))
        feeder.start()
        await send({"type": "http.response.zerocopysend", "file": f})
    feeder.join()


async def raw_cold(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """A file (which the test evicted from the page cache) sent while the loop ticks.

    pathsend by default; ``?via=read`` hands over a file whose read() calls
    are watched, for TLS, where the file is read and copied.
    """
    path = _file("cold.bin")
    observed = _observation()
    ticker = asyncio.ensure_future(_tick(observed))
    with _watching(observed):
        await send(_head(os.path.getsize(path)))
        if _query(scope).get("via") == "read":
            with _ReadWatched(path, observed) as f:
                await send({"type": "http.response.zerocopysend", "file": f})
        else:
            await send({"type": "http.response.pathsend", "path": path})
    ticker.cancel()


RAW: Dict[str, Callable] = {
    "/raw/zerocopy": raw_zerocopy,
    "/raw/descriptor": raw_descriptor,
    "/raw/mixed": raw_mixed,
    "/raw/pathsend": raw_pathsend,
    "/raw/parts": raw_parts,
    "/raw/disconnect": raw_disconnect,
    "/raw/scope": raw_scope,
    "/raw/fail": raw_fail,
    "/raw/pipe": raw_pipe,
    "/raw/cold": raw_cold,
}


# -- the dispatcher -----------------------------------------------------------------------

async def stats(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    body = json.dumps({"implementation": fastwrap.IMPLEMENTATION, "stats": fastwrap.stats(),
                       "pid": os.getpid(), **OBSERVED}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/__stats__":
        await stats(scope, receive, send)
    elif path in RAW:
        await RAW[path](scope, receive, send)
    elif path.startswith("/fastapi/"):
        await fastapi_app(scope, receive, send)
    else:
        await starlette_app(scope, receive, send)


__all__: List[str] = ["app", "starlette_app", "fastapi_app", "mixed_expected", "MIXED", "PIPED"]
