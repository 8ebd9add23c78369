"""What runs inside a helper process: draining connections, filling pipes, sending HTTP requests."""
from __future__ import annotations

import errno
import json
import os
import socket
import struct
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from .model import MIB

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    ssl = None  # type: ignore[assignment]


def helper_main(argv: Sequence[str]) -> int:
    """Entry point of the helper processes: ``drain``, ``feed`` or ``client`` ROLE FD."""
    role, fd = argv[0], int(argv[1])
    ctl = socket.socket(fileno=fd)
    loops: dict[str, Callable[[socket.socket], None]] = {
        "drain": _drain_loop, "feed": _feed_loop, "client": _client_loop}
    try:
        loops[role](ctl)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the bench went away: nothing left to do
    finally:
        ctl.close()
    return 0


def _orders(ctl: socket.socket, size: int, what: str) -> Iterator[tuple[bytes, int]]:
    """Each order the bench sends until it hangs up: its message and the descriptor with it."""
    while True:
        message, fds, _flags, _addr = socket.recv_fds(ctl, size, 1)
        if not message:
            return
        if not fds:
            raise RuntimeError(f"an order without {what}: {message!r}")
        yield message, fds[0]


# -- helper: the receiving end ------------------------------------------------------

def _drain_loop(ctl: socket.socket) -> None:
    """Read every connection handed over to its end, then report the byte count."""
    buffer = memoryview(bytearray(MIB))
    for message, fd in _orders(ctl, 64, "a connection"):
        count = _drain(socket.socket(fileno=fd), message == b"tls", buffer)
        ctl.sendall(struct.pack("!q", count))


def _drain(sock: socket.socket, tls: bool, buffer: memoryview) -> int:
    count = 0
    try:
        if tls:
            assert ssl is not None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # A throwaway certificate on loopback: the bytes are counted, not trusted.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname="localhost")
        while True:
            n = sock.recv_into(buffer)
            if not n:
                break
            count += n
    except OSError:
        pass  # a reset, or TLS ending without close_notify: the end all the same
    finally:
        sock.close()
    return count


# -- helper: filling pipes ---------------------------------------------------------

def _feed_loop(ctl: socket.socket) -> None:
    """Write a file into each pipe handed over, as many times as asked, then close it."""
    for message, fd in _orders(ctl, 4096, "a pipe"):
        name, times = message.decode("utf-8").split("\0")
        try:
            _feed(fd, name, int(times))
            reply = "ok"
        except OSError as exc:
            reply = f"{type(exc).__name__}: {exc}"
        finally:
            os.close(fd)
        ctl.sendall(reply.encode("utf-8") + b"\n")


def _feed(out: int, name: str, times: int) -> None:
    with open(name, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        use_sendfile = hasattr(os, "sendfile")
        for _ in range(times):
            offset = 0
            while offset < size:
                if use_sendfile:
                    try:
                        n = os.sendfile(out, fd, offset, size - offset)
                    except OSError as exc:
                        # sendfile(2) to a pipe is Linux's; elsewhere copy.
                        if exc.errno not in (errno.EINVAL, errno.ENOTSOCK, errno.EOPNOTSUPP,
                                             errno.ENOSYS):
                            raise
                        use_sendfile = False
                        continue
                else:
                    chunk = memoryview(os.pread(fd, min(MIB, size - offset), offset))
                    n = len(chunk)
                    while chunk:
                        chunk = chunk[os.write(out, chunk):]
                if n == 0:
                    raise OSError(errno.EIO, f"{name} shrank while being fed")
                offset += n


# -- helper: the HTTP client -----------------------------------------------------------

class HttpError(Exception):
    """A response that is not the one asked for."""


def _client_loop(ctl: socket.socket) -> None:
    """Run each order (a JSON line) and answer with what came of it (a JSON line)."""
    lines = ctl.makefile("rb")
    for line in lines:
        order = json.loads(line)
        try:
            result = _hammer(int(order["port"]), str(order["path"]), int(order["size"]),
                             float(order["seconds"]))
        except (OSError, HttpError, ValueError) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        ctl.sendall(json.dumps(result).encode("utf-8") + b"\n")


def _hammer(port: int, path: str, size: int, seconds: float) -> dict[str, Any]:
    """GET *path* one request after another for *seconds*, checking every response.

    HTTP/1.1 keep-alive; when the server closes (HTTP/1.0, ``Connection:
    close``) it reads to the end and reconnects.  The request's bytes are
    built once and every body lands in the same buffer.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("ascii")
    buffer = memoryview(bytearray(MIB))
    sock: Optional[socket.socket] = None
    requests = connections = 0
    fresh = False
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while requests == 0 or time.perf_counter() < deadline:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections += 1
                fresh = True
            sock.sendall(request)
            keep_alive = _read_response(sock, buffer, size)
            if keep_alive is None:  # an idle keep-alive connection the server closed
                if fresh:
                    raise HttpError("the server closed a new connection without answering")
                sock.close()
                sock = None
                continue
            requests += 1
            fresh = False
            if not keep_alive:
                if sock.recv_into(buffer):
                    raise HttpError("bytes after the body of a response that closes")
                sock.close()
                sock = None
        elapsed = time.perf_counter() - start
    finally:
        if sock is not None:
            sock.close()
    return {"requests": requests, "seconds": elapsed, "connections": connections}


def _read_response(sock: socket.socket, buffer: memoryview, size: int) -> Optional[bool]:
    """Read one response of *size* body bytes; whether the connection stays open.

    None when the connection was closed before any byte of it.
    """
    head = bytearray()
    end = -1
    while end < 0:
        n = sock.recv_into(buffer, 8192)  # the headers, and perhaps a little of the body
        if n == 0:
            if not head:
                return None
            raise HttpError("the connection closed inside the headers")
        head += buffer[:n]
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) > 65536:
            raise HttpError("no end of headers in 64 KiB")
    lines = bytes(head[:end]).split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[1] != b"200":
        raise HttpError(f"status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" not in headers:
        raise HttpError("no Content-Length")
    length = int(headers[b"content-length"])
    if length != size:
        raise HttpError(f"Content-Length {length}, expected {size}")
    remaining = length - (len(head) - end - 4)
    if remaining < 0:
        raise HttpError("more bytes than Content-Length")
    while remaining:
        n = sock.recv_into(buffer, min(remaining, len(buffer)))
        if n == 0:
            raise HttpError(f"the connection closed {remaining} bytes short")
        remaining -= n
    connection = headers.get(b"connection", b"").lower()
    if status[0] == b"HTTP/1.0":
        return connection == b"keep-alive"
    return connection != b"close"
