"""Connections the drain helper reads and counts, and pipes the feed helper fills."""
from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Any, BinaryIO, Iterator, Optional

from .children import Helper
from .model import BenchError


# -- connections a helper drains -------------------------------------------------------

class Connection:
    """A sending socket whose far end the drain helper reads and counts."""

    def __init__(self, sock: socket.socket, drain: Helper) -> None:
        self.sock = sock
        self._drain = drain
        self._answered = False

    def finish(self, expected: int) -> None:
        """End the stream and wait until the receiver has read all of it."""
        self.sock.shutdown(socket.SHUT_WR)
        received = self._received()
        if received != expected:
            raise BenchError(f"the receiver got {received} bytes, expected {expected}")

    def _received(self) -> int:
        self._answered = True
        reply = b""
        while len(reply) < 8:
            try:
                chunk = self._drain.ctl.recv(8 - len(reply))
            except OSError:
                chunk = b""
            if not chunk:
                raise self._drain.died("before counting a connection")
            reply += chunk
        return int(struct.unpack("!q", reply)[0])

    def close(self) -> None:
        self.sock.close()
        if not self._answered:  # a failed sample: keep the drain's answers in step
            with contextlib.suppress(BenchError):
                self._received()


class Links:
    """Makes connections of each kind -- tcp, socketpair, tls -- to the drain helper."""

    def __init__(self, drain: Helper, tls: Optional[Any]) -> None:
        self._drain = drain
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))

    @contextlib.contextmanager
    def connect(self, kind: str) -> Iterator[Connection]:
        if kind == "socketpair":
            mine, theirs = socket.socketpair()
        else:
            mine = socket.create_connection(self._listener.getsockname())
            theirs, _ = self._listener.accept()
            mine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._drain.send_fd(b"tls" if kind == "tls" else b"plain", theirs.fileno())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        connection = Connection(mine, self._drain)
        try:
            if kind == "tls":
                assert self._tls is not None
                connection.sock = self._tls.wrap_socket(mine, server_side=True)
            yield connection
        finally:
            connection.close()

    def close(self) -> None:
        self._listener.close()


@contextlib.contextmanager
def fed_pipe(feeder: Helper, name: str, times: int) -> Iterator[BinaryIO]:
    """The read end of a pipe the feed helper fills with *times* copies of file *name*."""
    r, w = os.pipe()
    try:
        feeder.send_fd(f"{name}\0{times}".encode("utf-8"), w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    reader = open(r, "rb")
    try:
        yield reader
    finally:
        reader.close()  # a feeder still writing gets EPIPE and answers
        answer = feeder.read_line()
    if answer != "ok":
        raise BenchError(f"feeding the pipe failed: {answer}")
