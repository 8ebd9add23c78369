"""fastwrap for custom asyncio servers: send a file on a non-blocking socket, awaitably.

:func:`sendfile` drives a :class:`fastwrap.Transmission` (sendfile, splice,
or send-from-memory, whichever fits) on a socket the server owns, waiting
for writability with the running loop's ``add_writer``, so a slow client
holds only its own task.  It works on the default event loop and on uvloop.

Example: a tiny HTTP server answering every request with one file::

    import asyncio, os, socket
    import fastwrap, fastwrap.asyncio

    async def handle(conn):
        loop = asyncio.get_running_loop()
        await loop.sock_recv(conn, 65536)                     # the request (ignored)
        with open("big.iso", "rb") as f:
            head = (f"HTTP/1.1 200 OK\\r\\nContent-Length: {os.fstat(f.fileno()).st_size}"
                    "\\r\\nConnection: close\\r\\n\\r\\n").encode()
            await fastwrap.asyncio.sendfile(conn, fastwrap.FileWrapper(f), headers=head)
        conn.close()

    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 8000))
        listener.setblocking(False)
        while True:
            conn, _ = await loop.sock_accept(listener)        # non-blocking already
            asyncio.create_task(handle(conn))

    asyncio.run(main())

The socket must be one the application owns (from ``sock_accept`` or
``sock_connect``), not one under an asyncio transport: the loop refuses
writer callbacks on a transport's descriptor.  The caller keeps ownership of
the socket and of the source (close both yourself).  A source that can block
on reading (a pipe with no data yet) is waited for inside the engine, which
holds the loop meanwhile: give this helper files, buffers and BytesIO.
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional

import fastwrap

__all__ = ["sendfile"]

# Looked up at call time, so a test can point the helper at either engine.
_Transmission = fastwrap.Transmission


async def sendfile(sock: Any, source: Any, count: Optional[int] = None,
                   headers: bytes = b"", *,
                   loop: Optional[asyncio.AbstractEventLoop] = None) -> int:
    """Send *headers*, then *source* from its position (at most *count* bytes), on *sock*.

    *source* is a :class:`fastwrap.FileWrapper`, a binary file, an mmap, a
    bytes-like object or a BytesIO; *sock* a non-blocking socket.  Returns
    the body bytes sent (headers not included); fewer than *count* when the
    source ended first.  A file source is left just after the last byte
    sent, also when the task is cancelled or the peer goes away: then the
    writer callback is removed and the transmission closed before the
    exception (``CancelledError``, ``ConnectionError``...) propagates.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    gettimeout = getattr(sock, "gettimeout", None)
    if gettimeout is not None and gettimeout() != 0:
        raise ValueError("sock must be non-blocking (sock.setblocking(False)): "
                         "a blocking send would stall the event loop")
    tx = _Transmission(source, sock, count, headers)
    try:
        fd = sock.fileno() if not isinstance(sock, int) else sock
        while not tx.done:
            try:
                tx.send()
            except BlockingIOError:
                await _writable(loop, fd)
            else:
                if not tx.done:
                    await asyncio.sleep(0)  # let other tasks have the loop between steps
        return tx.sent
    finally:
        tx.close()


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)
