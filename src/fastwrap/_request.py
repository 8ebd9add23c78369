"""Reading an HTTP/1.x request head without the email package.

``http.server`` parses request headers with ``email.feedparser``, which is
built for MIME documents and costs more per request than sending a small
file.  A request head is simpler: a request line, then ``name: value``
lines up to an empty one.  This reads exactly that, and refuses what
RFC 9112 says a server must refuse instead of guessing.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

MAX_LINE = 65536
MAX_HEADERS = 100


class BadRequest(Exception):
    """The head cannot be read: answer *status* and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Request header fields in the order received, looked up without regard to case.

    Offers the part of ``email.message.Message`` that wsgiref and
    ``http.server`` use: ``get``, ``[]``, ``in``, ``items``, ``get_all`` and
    ``get_content_type``.
    """

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._first: dict[str, str] = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str) -> Optional[str]:
        return self._first.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def get_all(self, name: str, failobj: Any = None) -> Any:
        key = name.lower()
        values = [value for field, value in self._fields if field.lower() == key]
        return values or failobj

    def get_content_type(self) -> str:
        value = self.get("content-type")
        if not value:
            return "text/plain"
        kind = value.split(";", 1)[0].strip().lower()
        return kind if kind.count("/") == 1 else "text/plain"

    def __str__(self) -> str:
        return "".join(f"{name}: {value}\r\n" for name, value in self._fields) + "\r\n"


def read_headers(rfile: Any) -> Headers:
    """The header fields from *rfile*, up to and including the empty line.

    Raises BadRequest (431 for too many or too long fields, 400 for a
    field with no colon, whitespace before the colon, or an obsolete line
    folding, which RFC 9112 5.2 lets a server reject), and EOFError when
    the client stops sending before the empty line: a head cut short is
    no request, whatever it held so far.
    """
    fields: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise BadRequest(431, "a header line is too long")
        if not line:
            raise EOFError("the request head ended before its empty line")
        if line in (b"\r\n", b"\n"):
            return Headers(fields)
        if len(fields) >= MAX_HEADERS:
            raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
        if line[:1] in (b" ", b"\t"):
            raise BadRequest(400, "obsolete line folding in the request head")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.rstrip() or b" " in name or b"\t" in name:
            raise BadRequest(400, f"a malformed header line: {line[:80]!r}")
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))


def check_host(headers: Headers, version: tuple[int, int]) -> None:
    """RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, and for any with several.

    (HTTP/1.0 predates Host: its requests may go without.)
    """
    hosts = headers.get_all("Host", [])
    if len(hosts) > 1:
        raise BadRequest(400, f"{len(hosts)} Host header fields")
    if not hosts and version >= (1, 1):
        raise BadRequest(400, "an HTTP/1.1 request without a Host header field")


#: Header fields a request head may hold (:func:`parse_head` answers 431 beyond).
MAX_FIELDS = MAX_HEADERS

_Head = Tuple[int, str, str, Tuple[int, int], List[Tuple[str, str]]]


def parse_head(buffer: "bytes | bytearray", max_head: int) -> Optional[_Head]:
    """The request head at the start of *buffer*, once it is all there.

    Returns None while the head is incomplete, and else ``(consumed, method,
    target, (major, minor), fields)``: *consumed* the bytes of the head (its
    empty line and any empty lines before the request line included, which
    RFC 9112 2.2 lets a server skip), *fields* ``(lowercased name, value)``
    pairs in order, values stripped.  Raises :class:`BadRequest`: 414 for a
    request line longer than *max_head*, 431 for a longer head or more than
    :data:`MAX_FIELDS` fields, 505 for HTTP/2 and later, and 400 for what
    ``http.server`` and RFC 9112 refuse (a request line that is not three
    words, a malformed version or header line, obsolete line folding, no
    Host in HTTP/1.1 or several Host fields).

    The rules of :func:`read_headers`, :func:`check_host` and the request
    line of fastwrap's wsgiref server, on a buffer an event loop fills: one
    function, which a compiled parser can replace.
    """
    start = 0
    size = len(buffer)
    while start < size and buffer[start] in (10, 13):  # CR, LF
        start += 1
    line_end = buffer.find(b"\n", start)
    if line_end < 0:
        if size - start > max_head:
            raise BadRequest(414, "the request line is too long")
        return None
    if line_end - start > max_head:
        raise BadRequest(414, "the request line is too long")
    ends = [i for i in (buffer.find(b"\n\n", line_end), buffer.find(b"\n\r\n", line_end))
            if i >= 0]
    if not ends:
        if size - start > max_head:
            raise BadRequest(431, "the request head is too large")
        return None
    end = min(ends)
    consumed = end + (2 if buffer[end + 1] == 10 else 3)
    if consumed - start > max_head:
        raise BadRequest(431, "the request head is too large")
    lines = bytes(buffer[start:end]).split(b"\n")
    method, target, version = _request_line(lines[0])
    if len(lines) - 1 > MAX_FIELDS:
        raise BadRequest(431, f"more than {MAX_FIELDS} header fields")
    fields: List[Tuple[str, str]] = []
    hosts = 0
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest(400, "obsolete line folding in the request head")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.rstrip() or b" " in name or b"\t" in name:
            raise BadRequest(400, f"a malformed header line: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        if key == "host":
            hosts += 1
        fields.append((key, value.strip().decode("latin-1")))
    if hosts > 1:
        raise BadRequest(400, f"{hosts} Host header fields")
    if not hosts and version >= (1, 1):
        raise BadRequest(400, "an HTTP/1.1 request without a Host header field")
    return consumed, method, target, version, fields


def _request_line(raw: bytes) -> Tuple[str, str, Tuple[int, int]]:
    line = raw.decode("latin-1").rstrip("\r")
    words = line.split()
    if len(words) != 3:
        # No HTTP/0.9: a server this fast should not answer without headers.
        raise BadRequest(400, f"Bad request syntax ({line!r})")
    method, target, version = words
    major, dot, minor = version[5:].partition(".")
    if (not version.startswith("HTTP/") or not dot or not major.isdigit()
            or not minor.isdigit() or len(major) > 10 or len(minor) > 10):
        raise BadRequest(400, f"Bad request version ({version!r})")
    number = (int(major), int(minor))
    if number >= (2, 0):
        raise BadRequest(505, f"Invalid HTTP version ({version[5:]})")
    return method, target, number
