"""The ASGI file extensions' rules, once, for every ASGI server integration.

``http.response.pathsend`` and ``http.response.zerocopysend`` hand a server
a file instead of its bytes.  What a message may name, where its bytes
start, how many of them the response may carry, and when a response can no
longer be completed are the same whatever server sends them; fastwrap's
integrations (:mod:`fastwrap.uvicorn`, :mod:`fastwrap.hypercorn`) ask this
module, and keep only what is their server's own: where the head is held,
how the bytes reach the socket, how a failure is answered.

- :data:`PATHSEND_EXTENSION` is what a server advertises for pathsend:
  ``{"ranges": True}`` (the ``offset`` and ``count`` fields proposed for
  the ASGI spec in asgiref PR #538) and ``{"more_body": True}``, fastwrap's
  extension field for a pathsend that does not end the response (one part
  of a ``multipart/byteranges`` body);
- :class:`FileSource` opens what a message names: a pathsend path (relative
  ones in the working directory; only a regular file, never a FIFO or a
  device), or a zerocopysend file or descriptor, with its offset and count;
- :func:`send_file` opens a message's file, hands it to the server's sender
  and lets go of it, or has the server fail the response;
- :func:`allowance` says how many body bytes a response may still carry
  (none for HEAD, 1xx, 204, 304; the rest of its Content-Length; unlimited
  when chunked);
- :class:`Portion` decides how many bytes of a source leave, whether the
  response can still be completed before the first of them, and whether
  what was sent came up short;
- :func:`h11_frame` gives the bytes h11 puts around a body of *n* bytes, for
  servers built on h11;
- :func:`rebind` lets an integration swap one class a server's function
  creates by its global name, keeping every other line the server's own.
"""
from __future__ import annotations

import io
import os
import stat
import types
from typing import (Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar,
                    cast)

from fastwrap import serving

__all__ = ["COPY_CHUNK", "FILE_MESSAGES", "PATHSEND", "PATHSEND_EXTENSION", "ZEROCOPYSEND",
           "FileSource", "Portion", "advertise", "allowance", "h11_frame", "open_path", "rebind",
           "refers_to", "send_file"]

PATHSEND = "http.response.pathsend"
ZEROCOPYSEND = "http.response.zerocopysend"
#: The message types that carry a file.
FILE_MESSAGES = (PATHSEND, ZEROCOPYSEND)

#: What ``scope["extensions"]["http.response.pathsend"]`` holds where fastwrap sends it.
#: ``ranges``: the message may carry ``offset`` (where the bytes start, default 0)
#: and ``count`` (how many, default: to the end of the file), as proposed for the
#: ASGI spec (asgiref PR #538); a file holding fewer than *count* bytes from
#: *offset* fails the response.  ``more_body``: fastwrap's extension field, as
#: on ``http.response.body``; ``True`` leaves the response open for more
#: messages (the parts of a ``multipart/byteranges`` body), default ``False``.
PATHSEND_EXTENSION: Dict[str, Any] = {"ranges": True, "more_body": True}

#: The piece a file is read in where it cannot leave zero-copy (TLS, or a
#: pipe of unknown length in a chunked response).
COPY_CHUNK = 256 * 1024

_F = TypeVar("_F", bound=Callable[..., Any])


class FileSource:
    """The file of one file message: where it starts, how much it holds, how to let go.

    Raises ``OSError`` for a path that cannot be opened and ``RuntimeError``
    for a message that names no usable file; :meth:`close` once sent (it
    closes a file opened for a pathsend, and puts a zerocopysend file with
    an offset back where it was).
    """

    def __init__(self, message: Dict[str, Any]) -> None:
        self._restore: Optional[int] = None
        self._owned = False
        #: Whether the file must hold all of *count* (a pathsend's count, as a
        #: Range answer announced it), rather than *count* being a cap.
        self.strict = False
        kind = message["type"]
        if kind == PATHSEND:
            # The fields first: a message that cannot be right opens nothing.
            start = _optional_int(message, "offset") or 0
            self.count: Optional[int] = _optional_int(message, "count")
            self.final = not _optional_bool(message, "more_body")
            self.strict = self.count is not None
            self.file, size = open_path(message.get("path"))
            self._owned = True
            if start:
                self.file.seek(start)
            self.available: Optional[int] = max(0, size - start)
            return
        self.file = self._open_zerocopy(message)
        self.count = _optional_int(message, "count")
        self.final = not message.get("more_body", False)  # as it always was taken
        offset = _optional_int(message, "offset")
        if offset is not None:
            # sendfile(2) with an offset pointer leaves the file position alone.
            self._restore = self.file.tell()
            self.file.seek(offset)
        try:
            self.available = self._available()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open_zerocopy(message: Dict[str, Any]) -> Any:
        file = message.get("file")
        if isinstance(file, int) and not isinstance(file, bool):
            # A bare descriptor: read it where it stands, and never close it
            # (Zero Copy Send: closing it is the application's business).
            return open(file, "rb", buffering=0, closefd=False)
        if file is None or not hasattr(file, "fileno"):
            raise RuntimeError(f"{ZEROCOPYSEND} needs 'file', an open file or a descriptor, "
                               f"got {file!r}")
        if isinstance(file, io.TextIOBase):
            raise RuntimeError(f"{ZEROCOPYSEND} needs a file opened in binary mode")
        return file

    def _available(self) -> Optional[int]:
        """Bytes the file holds from where the send starts; None if that cannot be known."""
        st = os.fstat(self.file.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(0, st.st_size - int(self.file.tell()))

    def wanted(self) -> Optional[int]:
        """Bytes this message asks for: its count, capped by what the file holds."""
        if self.count is None:
            return self.available
        if self.available is None:
            return self.count
        return min(self.count, self.available)

    def close(self) -> None:
        """Let go of the file: close it if this opened it, else restore its position."""
        if self._owned:
            self.file.close()
        elif self._restore is not None:
            self.file.seek(self._restore)


def _optional_int(message: Dict[str, Any], key: str) -> Optional[int]:
    value = message.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RuntimeError(f"{message['type']} '{key}' must be an int >= 0, got {value!r}")
    return int(value)


def _optional_bool(message: Dict[str, Any], key: str) -> bool:
    value = message.get(key, False)
    if not isinstance(value, bool):
        raise RuntimeError(f"{message['type']} '{key}' must be True or False, got {value!r}")
    return value


def advertise(scope: Dict[str, Any]) -> None:
    """Put the file extensions fastwrap sends into *scope*'s ``extensions``."""
    extensions = scope.get("extensions")
    if extensions is None:
        extensions = scope["extensions"] = {}
    extensions[PATHSEND] = dict(PATHSEND_EXTENSION)  # a copy each: an app may change its own
    extensions[ZEROCOPYSEND] = {}


async def send_file(message: Dict[str, Any],
                    send_source: Callable[["FileSource"], Awaitable[None]],
                    fail: Callable[[], Awaitable[None]]) -> None:
    """Send the file *message* names with *send_source*, and let go of it.

    A message that names nothing that can be sent (a missing path, a bad
    field) has the server *fail* the response (its 500 while the head is
    held, else the connection closed) and the error raised, for the
    server to log as an application's error.
    """
    try:
        source = FileSource(message)
    except Exception:
        await fail()
        raise
    try:
        await send_source(source)
    finally:
        source.close()


def open_path(path: Any) -> Tuple[Any, int]:
    """The regular file a pathsend names, open for reading, and its size.

    A relative path is resolved in the working directory, as the application
    (Starlette's ``FileResponse("big.iso")``) resolved it.  Opening a FIFO
    for reading waits for a writer and opening a device may act on it, so
    only what stat() says is a regular file is opened, without waiting, and
    what was opened is checked again.
    """
    if not isinstance(path, str):
        raise RuntimeError(f"{PATHSEND} needs the file's path as a str, got {path!r}")
    _require_regular(os.stat(path), path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        _require_regular(st, path)
        os.set_blocking(fd, True)  # meaningless for a regular file today, but not promised
        return open(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _require_regular(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RuntimeError(f"{PATHSEND}: {path!r} is not a regular file")


def allowance(method: str, status: int, headers: Iterable[Tuple[bytes, bytes]],
              body_sent: int) -> Optional[int]:
    """Body bytes a response may still carry after *body_sent*; None when not limited.

    No body for HEAD, 1xx, 204 and 304; the first Content-Length (as servers
    take it) less what was sent; None for a chunked response, or one whose
    Content-Length does not parse.
    """
    if not serving.body_allowed(method, status):
        return 0
    for name, value in headers:
        name = name.lower()
        if name == b"content-length":
            declared = serving.parse_content_length(value.decode("latin-1"))
            return None if declared is None else max(0, declared - body_sent)
        if name == b"transfer-encoding":
            return None
    return None


class Portion:
    """How much of a :class:`FileSource` one message sends, under the response's *allowance*.

    ``n`` is the byte count to send, None for "until the file ends" (a pipe
    in a response of no fixed length: it can only be copied).
    """

    __slots__ = ("allowance", "exact", "final", "n", "required")

    def __init__(self, source: FileSource, allowance: Optional[int]) -> None:
        wanted = source.wanted()
        self.allowance = allowance
        self.final = source.final
        #: The bytes the message itself insists on (a pathsend's count), or None.
        self.required = source.count if source.strict else None
        if allowance is None:
            self.n, self.exact = wanted, wanted is not None
        elif wanted is None:
            self.n, self.exact = allowance, False  # until the file ends or the allowance is used up
        else:
            self.n, self.exact = min(wanted, allowance), True

    @property
    def unfillable(self) -> bool:
        """Known before its first byte: the file holds less than the response still needs.

        (It shrank since the application took its length, or a pathsend's
        count reaches past its end.)  Such a response can only be answered
        with an error, or cut short.
        """
        return self._short_of_count() or (self.final and self.allowance is not None
                                          and self.n is not None and self.n < self.allowance)

    def _short_of_count(self) -> bool:
        """Whether the file holds less than the pathsend's count (within the allowance)."""
        if self.required is None or self.n is None:
            return False
        needed = self.required if self.allowance is None else min(self.required, self.allowance)
        return self.n < needed

    def unfillable_reason(self) -> str:
        """Why the portion is unfillable, in the words a server logs."""
        if self._short_of_count():
            return f"the file holds {self.n} bytes of the {self.required} the pathsend counts"
        return (f"the file holds {self.n} bytes of the {self.allowance} the response "
                "still announces")

    def short(self, sent: int) -> Optional[int]:
        """The byte count *sent* fell short of, or None: the response may go on or end."""
        if self.exact and self.n is not None and sent < self.n:
            return self.n  # the file shrank while it was being sent
        if self.final and self.allowance is not None and sent < self.allowance:
            return self.allowance  # less than the Content-Length declared
        return None


class _Length:
    """Stands for *n* body bytes in h11's framing (h11's documented sendfile support)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def h11_frame(connection: Any, n: int) -> Tuple[bytes, bytes]:
    """The bytes an ``h11.Connection`` puts before and after *n* body bytes.

    h11 counts the bytes against the Content-Length (so its state stays
    right for the end of the message) and gives the chunk framing.
    """
    import h11

    marker = _Length(n)
    event = h11.Data(data=cast(bytes, marker))  # any object with a length, says h11
    pieces: List[Any] = connection.send_with_data_passthrough(event) or []
    at = next(i for i, piece in enumerate(pieces) if piece is marker)
    return b"".join(pieces[:at]), b"".join(pieces[at + 1:])


def _uses(code: types.CodeType, name: str) -> bool:
    """Whether *code*, or a function defined inside it, reads the global *name*."""
    return name in code.co_names or any(
        _uses(const, name) for const in code.co_consts if isinstance(const, types.CodeType))


def refers_to(function: Callable[..., Any], name: str) -> bool:
    """Whether third-party *function* (or one defined inside it) uses *name*, global or attribute.

    How an integration checks, before taking something over, that a
    version of a server or framework still works the way it was written for.
    """
    return _uses(function.__code__, name)


def rebind(function: _F, name: str, value: Any, owner: str) -> _F:
    """A copy of a server's *function* that finds *value* under the global *name*.

    Servers create their protocol objects inline, by a module-global class
    name, in the middle of a longer method.  The copy changes exactly that
    one name and keeps every other line the server's (functions defined
    inside it find the name too, as they share its globals).  *owner* names the
    integration, for the error raised when the server no longer uses *name*
    there.
    """
    if not _uses(function.__code__, name):
        raise ImportError(f"{owner} does not know this server version: "
                          f"{function.__qualname__} no longer uses {name}")
    namespace = dict(function.__globals__, **{name: value})
    hooked = types.FunctionType(function.__code__, namespace, function.__name__,
                                function.__defaults__, function.__closure__)
    hooked.__kwdefaults__ = function.__kwdefaults__
    hooked.__qualname__ = function.__qualname__
    hooked.__doc__ = function.__doc__
    return cast(_F, hooked)
