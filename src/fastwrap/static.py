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
import mimetypes
import os
import stat
import sys
import urllib.parse
from typing import Any, Callable, Iterable, Iterator, Optional
from wsgiref.handlers import format_date_time

import fastwrap

from ._paths import log

__all__ = ["StaticFiles", "serve"]

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


class StaticFiles:
    """WSGI application serving the files under *root*.

    *follow_symlinks*: serve files reached through symbolic links that lead
    out of *root* (links that stay inside it are always followed).
    *listing*: list directories that have no ``index.html``.
    """

    def __init__(self, root: "str | os.PathLike[str]", *, follow_symlinks: bool = False,
                 listing: bool = True) -> None:
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"StaticFiles root is not a directory: {root!r}")
        self.follow_symlinks = follow_symlinks
        self.listing = listing

    def __call__(self, environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _error(start_response, 405, [("Allow", _ALLOWED)])
        try:
            target, fd, st = self._open(environ)
        except _Refusal as refusal:
            log.debug("refused %r: %s", environ.get("PATH_INFO"), refusal)
            return _error(start_response, refusal.status)
        except FileNotFoundError:
            return _error(start_response, 404)
        except (PermissionError, IsADirectoryError):
            return _error(start_response, 403)
        except (NotADirectoryError, OSError, ValueError):
            return _error(start_response, 404)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                return self._directory(environ, start_response, target)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return _error(start_response, 403)  # a FIFO or device would block or never end
            # Unbuffered: the body leaves by the kernel or in large reads, so a
            # buffer would only cost the syscalls that set it up.
            f = open(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        try:
            return _file_response(environ, start_response, f, st, target)
        except BaseException:
            f.close()
            raise

    # -- where a request leads ---------------------------------------------

    def _resolve(self, environ: _Environ) -> str:
        """The real path under root for the request, or a _Refusal saying why not."""
        raw = (environ.get("REQUEST_URI") or environ.get("RAW_URI") or "").split("?", 1)[0].lower()
        if any(enc in raw for enc in _ENCODED_SEPARATORS):
            raise _Refusal(400, "a percent-encoded path separator in the request path")
        path = environ.get("PATH_INFO", "") or "/"
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

    def _open(self, environ: _Environ) -> tuple[str, int, os.stat_result]:
        """The real path of what the request names, a descriptor open on it, its stat."""
        joined = self._resolve(environ)
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

    def _directory(self, environ: _Environ, start_response: _StartResponse,
                   target: str) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if not path.endswith("/"):
            # Relative links in the page need the trailing slash.
            location = urllib.parse.quote(path.encode("latin-1")) + "/"
            query = environ.get("QUERY_STRING")
            if query:
                location += "?" + query
            return _error(start_response, 301, [("Location", location)])
        index = os.path.join(target, "index.html")
        if os.path.isfile(index):
            environ = dict(environ, PATH_INFO=path + "index.html", REQUEST_URI="")
            return self(environ, start_response)
        if not self.listing:
            return _error(start_response, 403)
        try:
            names = sorted(os.listdir(target))
        except OSError:
            return _error(start_response, 403)
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
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


# -- files --------------------------------------------------------------------

def _file_response(environ: _Environ, start_response: _StartResponse, f: Any,
                   st: os.stat_result, target: str) -> Iterable[bytes]:
    size = st.st_size
    etag = f'"{st.st_mtime_ns:x}-{size:x}"'
    mtime = int(st.st_mtime)
    headers = [
        ("Content-Type", _content_type(target)),
        ("Last-Modified", format_date_time(mtime)),
        ("ETag", etag),
        ("Accept-Ranges", "bytes"),
    ]
    if _not_modified(environ, etag, mtime):
        f.close()
        # RFC 9110 8.6: a 304 may carry Content-Length, but only the 200's.
        start_response("304 Not Modified", headers[1:3] + [("Content-Length", str(size))])
        return []
    span = _range(environ, size, etag, mtime)
    if span is None:
        start, length, status = 0, size, "200 OK"
    elif span == "unsatisfiable":
        f.close()
        return _error(start_response, 416, [("Content-Range", f"bytes */{size}")])
    else:
        start, length = span
        status = "206 Partial Content"
        headers.append(("Content-Range", f"bytes {start}-{start + length - 1}/{size}"))
    headers.append(("Content-Length", str(length)))
    start_response(status, headers)
    if environ.get("REQUEST_METHOD") == "HEAD":
        f.close()
        return []
    file_wrapper = environ.get("wsgi.file_wrapper")
    if start == 0 and length == size and file_wrapper is not None:
        return file_wrapper(f)  # type: ignore[no-any-return]
    f.seek(start)
    if file_wrapper is fastwrap.FileWrapper:
        # fastwrap's servers send min(Content-Length, what remains) from tell().
        return fastwrap.FileWrapper(f)
    return _RangeBody(f, length)


def _content_type(target: str) -> str:
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


def _not_modified(environ: _Environ, etag: str, mtime: int) -> bool:
    """RFC 9110 13.2.2: If-None-Match wins; If-Modified-Since only without it."""
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        # Weak comparison, as 13.1.2 asks for GET and HEAD.
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return etag in tags
    since = _http_date(environ.get("HTTP_IF_MODIFIED_SINCE"))
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


def _range(environ: _Environ, size: int, etag: str, mtime: int) -> Any:
    """(start, length) of a single satisfiable range, "unsatisfiable", or None (send all).

    Several ranges get the whole file: one sendfile beats a multipart body
    the client must take apart, and it cannot be abused to amplify a
    response with overlapping ranges.
    """
    header = environ.get("HTTP_RANGE")
    if not header or environ.get("REQUEST_METHOD") != "GET":
        return None
    if_range = environ.get("HTTP_IF_RANGE")
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


_REASONS = {301: "Moved Permanently", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 416: "Range Not Satisfiable",
            500: "Internal Server Error"}


def _error(start_response: _StartResponse, status: int,
           extra: Optional[list[tuple[str, str]]] = None) -> list[bytes]:
    reason = _REASONS[status]
    body = f"{status} {reason}\n".encode("ascii")
    start_response(f"{status} {reason}", [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body)))] + (extra or []))
    return [body]


def serve(root: "str | os.PathLike[str]" = ".", bind: str = "127.0.0.1", port: int = 8000,
          threads: int = 16, *, follow_symlinks: bool = False, quiet: bool = False) -> None:
    """Serve *root* on fastwrap's threaded server until interrupted (``fastwrap serve``)."""
    from . import wsgiref

    app = StaticFiles(root, follow_symlinks=follow_symlinks)
    handler = type("RequestHandler", (wsgiref.RequestHandler,), {"quiet": quiet})
    server = wsgiref.make_server(bind, port, app, threads=threads, handler=handler)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {app.root} at http://{shown}:{port}/ (fastwrap {fastwrap.__version__}, "
          f"{fastwrap.IMPLEMENTATION} engine, {threads} threads)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Interrupted: stopping.", file=sys.stderr)
    finally:
        server.server_close()
