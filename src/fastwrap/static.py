"""A WSGI application serving the files under one directory, the way users expect.

``StaticFiles(root)`` answers GET and HEAD with Content-Type, Content-Length,
Last-Modified and a strong ETag; ``If-None-Match`` and ``If-Modified-Since``
with 304; one ``Range:`` with 206, an unsatisfiable one with 416 and several
with a plain 200 of the whole file (RFC 9110 lets a server ignore Range);
directories with their ``index.html`` or an HTML-escaped listing.

Files leave as ``environ['wsgi.file_wrapper']``, so any server's fast path
takes them.  A range is sent zero-copy from the file's position when the
server is one of fastwrap's (its framing sends min(Content-Length, what the
file holds from ``tell()``)); other servers iterate the whole wrapper, so
there the range is read and yielded instead: slower, but exact everywhere.

Nothing outside *root* is ever served.  The path is checked segment by
segment (NUL, ``..``, separators smuggled into a segment, percent-encoded
separators in the raw request line), then resolved, and a file whose real path
leaves *root* through a symbolic link is refused unless *follow_symlinks*.
Hostile or malformed requests get 400, 403 or 404, never a traceback.
"""
from __future__ import annotations

import email.utils
import functools
import html
import http
import mimetypes
import os
import stat
import sys
import urllib.parse
from typing import Any, Callable, Iterable, Iterator, Optional
from wsgiref.handlers import format_date_time

import fastwrap

from ._paths import log

__all__ = ["Answer", "FileInfo", "Request", "StaticFiles", "content_type", "error_answer",
           "file_answer", "file_headers", "reason", "serve"]

_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]

_ALLOWED = "GET, HEAD"
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_PATH = (getattr(os, "O_PATH", 0) | getattr(os, "O_CLOEXEC", 0)
           if sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd") else 0)
# Characters that separate path segments on this platform, besides "/".
_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep and sep != "/")
# Percent-encoded, a separator would hide inside one segment of the request.
# A backslash is one only where the platform says so (Windows): on POSIX it is
# an ordinary character of file names, which the listing links to as %5C.
_ENCODED_SEPARATORS = ("%2f",) + (("%5c",) if "\\" in _SEPARATORS else ())
_mimetypes = mimetypes.MimeTypes()


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Request:
    """What a static answer depends on, taken from any server's request.

    *path* is the percent-decoded path as WSGI's ``PATH_INFO`` carries it (the
    request's bytes as latin-1); *raw_path* the path part of the target as
    sent, before decoding (``REQUEST_URI`` up to ``?``), where a
    percent-encoded separator is still visible; *query* what follows ``?``.
    The header values are those of the request, None when absent.
    """

    __slots__ = ("method", "path", "raw_path", "query", "if_none_match",
                 "if_modified_since", "range", "if_range")

    def __init__(self, method: str, path: str, raw_path: str = "", query: str = "", *,
                 if_none_match: Optional[str] = None, if_modified_since: Optional[str] = None,
                 range: Optional[str] = None, if_range: Optional[str] = None) -> None:
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.if_none_match = if_none_match
        self.if_modified_since = if_modified_since
        self.range = range
        self.if_range = if_range

    @classmethod
    def from_environ(cls, environ: _Environ) -> "Request":
        """The request of a WSGI *environ* (``REQUEST_URI`` or ``RAW_URI`` for the raw path)."""
        raw = (environ.get("REQUEST_URI") or environ.get("RAW_URI") or "").split("?", 1)[0]
        return cls(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""), raw,
                   environ.get("QUERY_STRING", ""),
                   if_none_match=environ.get("HTTP_IF_NONE_MATCH"),
                   if_modified_since=environ.get("HTTP_IF_MODIFIED_SINCE"),
                   range=environ.get("HTTP_RANGE"), if_range=environ.get("HTTP_IF_RANGE"))

    @classmethod
    def from_target(cls, method: str, target: str, fields: "dict[str, str]") -> "Request":
        """The request for *target* as sent, with *fields* (lowercase name: first value).

        Decodes the path as wsgiref does for ``PATH_INFO``.
        """
        raw, _, query = target.partition("?")
        return cls(method, urllib.parse.unquote(raw, "iso-8859-1"), raw, query,
                   if_none_match=fields.get("if-none-match"),
                   if_modified_since=fields.get("if-modified-since"),
                   range=fields.get("range"), if_range=fields.get("if-range"))

    @property
    def conditional(self) -> bool:
        """Whether a validator or a range may change the answer for a file."""
        return (self.if_none_match is not None or self.if_modified_since is not None
                or self.range is not None)


class FileInfo:
    """What the response head of a file says about it: type, size and validators.

    The ETag names the inode and the change time besides the size and the
    modification time: a file replaced by rename is another file even with
    the same size and mtime, and a client holding the old copy must never
    get a 304 for the new one.
    """

    __slots__ = ("target", "stat", "size", "etag", "mtime", "last_modified", "content_type")

    def __init__(self, target: str, st: os.stat_result) -> None:
        self.target = target  # the real path (its name gives the type)
        self.stat = st
        self.size = st.st_size
        self.etag = (f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}'
                     f'-{st.st_ctime_ns:x}"')
        self.mtime = int(st.st_mtime)
        self.last_modified = format_date_time(self.mtime)
        self.content_type = content_type(target)


class Answer:
    """What a request to :class:`StaticFiles` gets: status, headers, and its body.

    The body is either *body* (generated: an error page, a listing) or
    *length* bytes of *file* from *start* (a 200 or 206 of a file; *file* is
    open, positioned at *start*, and the caller closes it).  The headers
    include Content-Length; whether a body is sent at all (HEAD, 304) is the
    server's rule (:func:`fastwrap.serving.body_allowed`).  For a file,
    *info* holds its validators and *named* the path under the root the
    request named (symbolic links not yet followed), which a server caching
    answers stats again to see whether it still leads to the same file.
    """

    __slots__ = ("status", "reason", "headers", "body", "file", "start", "length",
                 "info", "named")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes = b"", *,
                 start: int = 0, length: int = 0, info: Optional[FileInfo] = None) -> None:
        self.status = status
        self.reason = reason(status)
        self.headers = headers
        self.body = body
        self.file: Any = None
        self.start = start
        self.length = length
        self.info = info
        self.named = ""

    @property
    def status_line(self) -> str:
        """``"200 OK"``: the status as WSGI's start_response takes it."""
        return f"{self.status} {self.reason}"


def reason(status: int) -> str:
    """The reason phrase of *status* (``"Not Found"``)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class StaticFiles:
    """WSGI application serving the files under *root*.

    *follow_symlinks*: serve files reached through symbolic links that lead
    out of *root* (links that stay inside it are always followed).
    *listing*: list directories that have no ``index.html``.

    Servers other than WSGI ones ask :meth:`answer` directly: the rules are
    the same either way.
    """

    def __init__(self, root: "str | os.PathLike[str]", *, follow_symlinks: bool = False,
                 listing: bool = True) -> None:
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"StaticFiles root is not a directory: {root!r}")
        self.follow_symlinks = follow_symlinks
        self.listing = listing

    def __call__(self, environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        answer = self.answer(Request.from_environ(environ))
        f = answer.file
        try:
            start_response(answer.status_line, answer.headers)
        except BaseException:
            if f is not None:
                f.close()
            raise
        if f is None:
            return [answer.body] if answer.body and environ.get(
                "REQUEST_METHOD") != "HEAD" else []
        try:
            return _file_body(environ, f, answer)
        except BaseException:
            f.close()
            raise

    def answer(self, request: Request) -> Answer:
        """What *request* gets: every rule of the server in one place.

        Never raises for anything a client sends; a file answer holds the
        file open (see :class:`Answer`).
        """
        if request.method not in ("GET", "HEAD"):
            return error_answer(405, [("Allow", _ALLOWED)])
        try:
            named = self._resolve(request)
            target, fd, st = self._open(named)
        except _Refusal as refusal:
            log.debug("refused %r: %s", request.path, refusal)
            return error_answer(refusal.status)
        except FileNotFoundError:
            return error_answer(404)
        except (PermissionError, IsADirectoryError):
            return error_answer(403)
        except (NotADirectoryError, OSError, ValueError):
            return error_answer(404)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                return self._directory(request, target)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return error_answer(403)  # a FIFO or device would block or never end
            info = FileInfo(target, st)
            answer = file_answer(request, info)
            answer.named = named
            if answer.status not in (200, 206):
                os.close(fd)
                return answer
            # Unbuffered: the body leaves by the kernel or in large reads, so a
            # buffer would only cost the syscalls that set it up.
            answer.file = open(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        if answer.start:
            answer.file.seek(answer.start)
        return answer

    # -- where a request leads ---------------------------------------------

    def _resolve(self, request: Request) -> str:
        """The path under root that *request* names (links not followed yet), or a _Refusal."""
        raw = request.raw_path.lower()
        if any(enc in raw for enc in _ENCODED_SEPARATORS):
            raise _Refusal(400, "a percent-encoded path separator in the request path")
        path = request.path or "/"
        if not path.startswith("/"):
            raise _Refusal(400, "the request path is not absolute")
        try:
            # PEP 3333: PATH_INFO carries the request's bytes as latin-1.
            name = os.fsdecode(path.encode("latin-1"))
        except (UnicodeError, ValueError):
            raise _Refusal(400, "the request path is not bytes in latin-1") from None
        if "\0" in name:
            raise _Refusal(400, "a NUL byte in the request path")
        segments = [segment for segment in name.split("/") if segment]
        for segment in segments:
            if segment in (".", ".."):
                raise _Refusal(400, "a dot segment in the request path")
            if any(sep in segment for sep in _SEPARATORS) or (
                    sys.platform == "win32" and ":" in segment):
                raise _Refusal(400, "a path separator or drive inside a segment")
        return os.path.join(self.root, *segments)

    def _open(self, joined: str) -> tuple[str, int, os.stat_result]:
        """The real path of *joined*, a descriptor open on it, its stat."""
        if _O_PATH:
            # Linux: resolve once, check where the descriptor really leads,
            # and reopen that very inode, so nothing can be swapped between
            # the check and the open (and a device is never opened outside).
            handle = os.open(joined, _O_PATH)
            try:
                real = os.readlink(f"/proc/self/fd/{handle}")
                self._check_inside(real)
                st = os.fstat(handle)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                    raise _Refusal(403, "not a regular file")  # a FIFO would block the open
                return real, os.open(f"/proc/self/fd/{handle}", _OPEN_FLAGS), st
            finally:
                os.close(handle)
        real = os.path.realpath(joined)
        self._check_inside(real)
        fd = os.open(real, _OPEN_FLAGS | _O_NONBLOCK)  # a FIFO must not block the open
        try:
            if _O_NONBLOCK:
                os.set_blocking(fd, True)
            return real, fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise

    def _check_inside(self, real: str) -> None:
        if not self.follow_symlinks and real != self.root and not real.startswith(
                self.root.rstrip(os.sep) + os.sep):
            raise _Refusal(403, "a symbolic link leads out of the served directory")

    # -- directories --------------------------------------------------------

    def _directory(self, request: Request, target: str) -> Answer:
        path = request.path or "/"
        if not path.endswith("/"):
            # Relative links in the page need the trailing slash.
            location = urllib.parse.quote(path.encode("latin-1")) + "/"
            if request.query:
                location += "?" + request.query
            return error_answer(301, [("Location", location)])
        index = os.path.join(target, "index.html")
        if os.path.isfile(index):
            return self.answer(Request(
                request.method, path + "index.html", "", request.query,
                if_none_match=request.if_none_match,
                if_modified_since=request.if_modified_since, range=request.range,
                if_range=request.if_range))
        if not self.listing:
            return error_answer(403)
        try:
            names = sorted(os.listdir(target))
        except OSError:
            return error_answer(403)
        title = html.escape(os.fsdecode(path.encode("latin-1")), quote=False)
        rows = []
        for name in names:
            shown = name + "/" if os.path.isdir(os.path.join(target, name)) else name
            href = urllib.parse.quote(os.fsencode(shown))
            rows.append(f'<li><a href="{html.escape(href)}">'
                        f"{html.escape(shown, quote=False)}</a></li>")
        page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n"
                "<ul>\n" + "\n".join(rows) + "\n</ul></body></html>\n")
        body = page.encode("utf-8", "surrogateescape")
        return Answer(200, [("Content-Type", "text/html; charset=utf-8"),
                            ("Content-Length", str(len(body)))], body)


# -- files --------------------------------------------------------------------

def file_headers(info: FileInfo) -> list[tuple[str, str]]:
    """The headers of a 200 of the file of *info*, Content-Length last."""
    return [("Content-Type", info.content_type), ("Last-Modified", info.last_modified),
            ("ETag", info.etag), ("Accept-Ranges", "bytes"),
            ("Content-Length", str(info.size))]


def file_answer(request: Request, info: FileInfo) -> Answer:
    """What *request* gets for the file of *info*: 200, 206, 304 or 416, without the file.

    Conditionals first (RFC 9110 13.2.2), then a single range.
    """
    size = info.size
    headers = file_headers(info)
    if _not_modified(request, info.etag, info.mtime):
        # RFC 9110 8.6: a 304 may carry Content-Length, but only the 200's.
        return Answer(304, headers[1:3] + headers[4:], info=info)
    span = _range(request, size, info.etag, info.mtime)
    if span is None:
        return Answer(200, headers, start=0, length=size, info=info)
    if span == "unsatisfiable":
        return error_answer(416, [("Content-Range", f"bytes */{size}")])
    start, length = span
    headers[4:] = [("Content-Range", f"bytes {start}-{start + length - 1}/{size}"),
                   ("Content-Length", str(length))]
    return Answer(206, headers, start=start, length=length, info=info)


def _file_body(environ: _Environ, f: Any, answer: Answer) -> Iterable[bytes]:
    if environ.get("REQUEST_METHOD") == "HEAD":
        f.close()
        return []
    file_wrapper = environ.get("wsgi.file_wrapper")
    assert answer.info is not None
    if answer.status == 200 and file_wrapper is not None:
        return file_wrapper(f)  # type: ignore[no-any-return]
    if file_wrapper is fastwrap.FileWrapper:
        # fastwrap's servers send min(Content-Length, what remains) from tell().
        return fastwrap.FileWrapper(f)
    return _RangeBody(f, answer.length)


def content_type(target: str) -> str:
    """The Content-Type of the file at *target*, from its suffixes."""
    name = os.path.basename(target)
    first = name.find(".", 1)  # a leading dot names a hidden file, not a type
    return _type_of_suffixes(name[first:] if first > 0 else "")


@functools.lru_cache(maxsize=512)
def _type_of_suffixes(suffixes: str) -> str:
    kind, encoding = _mimetypes.guess_type("file" + suffixes, strict=False)
    if kind is None or encoding is not None:
        # A .gz file is bytes to the client, not text it should decode.
        return "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        return kind + "; charset=utf-8"
    return kind


def _not_modified(request: Request, etag: str, mtime: int) -> bool:
    """RFC 9110 13.2.2: If-None-Match wins; If-Modified-Since only without it."""
    if_none_match = request.if_none_match
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        # Weak comparison, as 13.1.2 asks for GET and HEAD.
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return etag in tags
    since = _http_date(request.if_modified_since)
    return since is not None and mtime <= since


def _http_date(value: Optional[str]) -> Optional[int]:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return int(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def _range(request: Request, size: int, etag: str, mtime: int) -> Any:
    """(start, length) of a single satisfiable range, "unsatisfiable", or None (send all).

    Several ranges get the whole file: one sendfile beats a multipart body
    the client must take apart, and it cannot be abused to amplify a
    response with overlapping ranges.
    """
    header = request.range
    if not header or request.method != "GET":
        return None
    if_range = request.if_range
    if if_range is not None:
        if_range = if_range.strip()
        if if_range.startswith('"') or if_range.startswith("W/"):
            if if_range != etag:  # strong comparison (RFC 9110 13.1.5)
                return None
        elif _http_date(if_range) != mtime:
            return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None  # a unit we do not know: ignore the header
    specs = [part.strip() for part in spec.split(",") if part.strip()]
    if not specs:
        return None
    spans = []
    for part in specs:
        first, dash, last = part.partition("-")
        start, end = _position(first.strip()), _position(last.strip())
        if not dash or start is None or end is None or (start == end == -1):
            return None  # malformed: RFC 9110 14.2 says ignore the header
        if start == -1:  # a suffix: the last *end* bytes
            if end > 0 and size > 0:
                spans.append((max(size - end, 0), min(end, size)))
            continue
        if end != -1 and end < start:
            return None
        if start >= size:
            continue  # this range is unsatisfiable
        last_byte = size - 1 if end == -1 else min(end, size - 1)
        spans.append((start, last_byte - start + 1))
    if not spans:
        return "unsatisfiable"
    if len(specs) > 1:
        return None
    return spans[0]


_BEYOND_ANY_FILE = 1 << 63


def _position(text: str) -> Optional[int]:
    """A byte position from a Range header: -1 when empty, None when not ASCII digits.

    More than 19 digits is further than any file reaches, and is not handed to
    int(), which refuses over 4300 digits.
    """
    if not text:
        return -1
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 19 else _BEYOND_ANY_FILE


class _RangeBody:
    """A range of a file, read and yielded, for servers without fastwrap's framing."""

    def __init__(self, f: Any, length: int) -> None:
        self._file = f
        self._remaining = length

    def __iter__(self) -> Iterator[bytes]:
        while self._remaining > 0:
            chunk = self._file.read(min(self._remaining, 1 << 18))
            if not chunk:
                return
            self._remaining -= len(chunk)
            yield chunk

    def close(self) -> None:
        self._file.close()


def error_answer(status: int, extra: Optional[list[tuple[str, str]]] = None) -> Answer:
    """An answer of *status* with a one-line text body naming it, and *extra* headers."""
    body = f"{status} {reason(status)}\n".encode("ascii")
    return Answer(status, [("Content-Type", "text/plain; charset=utf-8"),
                           ("Content-Length", str(len(body)))] + (extra or []), body)


def serve(root: "str | os.PathLike[str]" = ".", bind: str = "127.0.0.1", port: int = 8000,
          threads: int = 16, *, follow_symlinks: bool = False, quiet: bool = False,
          workers: int = 1, **limits: Any) -> int:
    """Serve *root* on fastwrap's event-loop server until interrupted (``fastwrap serve``).

    With *workers* above 1, that many processes serve the port (see
    :func:`fastwrap.server.run`).  Returns the exit status: 0 after a clean stop.

    *threads* read the parts of files that are not in the page cache;
    *limits* are further fields of :class:`fastwrap.server.Config`
    (``head_timeout``, ``idle_timeout``, ``send_timeout``, ``max_head``,
    ``max_connections``, ``grace``, ``loop``).
    """
    import signal
    import socket

    from . import server as core

    config = core.Config(root=os.path.realpath(os.fspath(root)), follow_symlinks=follow_symlinks,
                         quiet=quiet, threads=threads, **limits)
    if workers > 1:
        loop = core.loop_name(config.loop)

        def announce(address: "tuple[str, int]") -> None:
            host, port = str(address[0]), int(address[1])
            shown = f"[{host}]" if ":" in host else host
            print(f"Serving {config.root} at http://{shown}:{port}/ (fastwrap "
                  f"{fastwrap.__version__}, {fastwrap.IMPLEMENTATION} engine, {loop} loop, "
                  f"{threads} threads, {workers} workers)", file=sys.stderr, flush=True)
        return core.run(config, bind, port, workers, announce=announce)
    app = core.Server(config)
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.create_server((bind, port), family=family, backlog=1024) as sock:
        host, port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        print(f"Serving {app.files.root} at http://{shown}:{port}/ (fastwrap "
              f"{fastwrap.__version__}, {fastwrap.IMPLEMENTATION} engine, {app.loop_name} loop, "
              f"{threads} threads)", file=sys.stderr, flush=True)
        try:
            app.run(sock)
        except KeyboardInterrupt:  # outside the main thread, no handler of the server's
            pass
    if app.signalled == signal.SIGINT:
        print("Interrupted: stopping.", file=sys.stderr)
    elif app.signalled is not None:
        print("Terminated: stopping.", file=sys.stderr)
    return 0
