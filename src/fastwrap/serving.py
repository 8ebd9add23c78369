"""The rules every server integration follows when a WSGI result is a file.

PEP 3333 leaves framing to the server, and servers get it wrong in
different ways (gunicorn starts at the raw descriptor offset and trusts
Content-Length, uWSGI starts at byte 0, bjoern ignores Content-Length,
waitress waits out a shrunk file).  fastwrap's integrations (wsgiref, make_server, gunicorn,
gevent, waitress, asyncio) all ask this module, so each rule is written once:

- the body starts at the file's logical position (``tell()``);
- at most min(Content-Length, what the file holds from there) bytes leave;
- the application's headers are kept, its Content-Length included; with
  none from it that parses, one is set from the file before the headers go
  out, so keep-alive stays correct;
- the body leaves as the file's bytes, never chunked: with no length known
  (a pipe), the connection's end is the body's;
- no body for HEAD, 1xx, 204 and 304;
- a file that comes up short of what was promised is logged, and the
  connection must be closed rather than left waiting;
- a file response inside wrappers that add nothing to its bytes (the
  stdlib's ``wsgiref.validate``, Werkzeug's ``ClosingIterator``, any
  middleware following the :data:`WRAPPED` protocol) is still a file
  response; the server closes what the application returned, once, and
  each wrapper closes what it wraps.
"""
from __future__ import annotations

import functools
import concurrent.futures
import io
import mmap
import os
import stat
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from . import _plan
from ._paths import log

#: Seconds an event-loop driver backs off when a transmission waits with no
#: descriptor to poll (``Wait.fd == -1``), rather than spin.
BACKOFF: float = _plan.BACKOFF
#: Bytes of a file whose page-cache residency one probe answers for, and one
#: ``Transmission.fetch()`` reads in: a driver that reads a file itself reads
#: it in pieces of at most this.
RESIDENT_WINDOW: int = _plan.RESIDENT_WINDOW


#: The attribute by which a response wrapper tells servers what it wraps.
#:
#: A middleware whose result wraps the application's iterable sets
#: ``wsgi_file_wrapped`` on it to that iterable, and so promises:
#:
#: - iterating the wrapper yields exactly the bytes iterating the wrapped
#:   object would, nothing added, dropped or changed (a wrapper that
#:   transforms does not have the attribute);
#: - it has not started: ``__iter__`` returns the wrapper itself and starts
#:   nothing (``wsgiref.validate`` and ``ClosingIterator`` call ``iter()`` on
#:   what they wrap at once), and its first ``__next__`` sets the attribute
#:   to None;
#: - its ``close()`` calls the wrapped object's ``close()`` (if it has one),
#:   once, whatever else it does before or after.
#:
#: A server may then send the wrapped object in its place (a file zero-copy)
#: without iterating the wrapper, and closes the wrapper, which closes the
#: rest.  Anything done in the wrapper's ``__iter__``/``__next__`` does not
#: run then: work that must happen at the end belongs in ``close()``.
WRAPPED: str = "wsgi_file_wrapped"

#: How many wrappers deep :meth:`FileResponse.of` looks for a file (a guard
#: against a chain that loops back on itself).
MAX_LAYERS: int = 32


#: Threads of :func:`fetch_pool`: a few are enough, as each mostly waits for the disk.
FETCH_THREADS = 4

_fetchers: Optional[concurrent.futures.ThreadPoolExecutor] = None
_fetchers_lock = threading.Lock()
_fetch_threads = FETCH_THREADS


def fetch_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's threads for ``Transmission.fetch()``, started at first use.

    An event-loop server hands them the windows a transmission waits for
    (``Wait.event == "disk"``), so that its loop never waits for the disk, as
    nginx's ``aio threads`` does; every server of the process shares them.
    """
    global _fetchers
    with _fetchers_lock:
        if _fetchers is None:
            _fetchers = concurrent.futures.ThreadPoolExecutor(
                _fetch_threads, thread_name_prefix="fastwrap-fetch")
        return _fetchers


def set_fetch_threads(threads: int) -> None:
    """Size :func:`fetch_pool` to *threads* (default :data:`FETCH_THREADS`).

    For a server whose cold files outnumber a few disks' worth of readers
    (``fastwrap serve --threads``).  A pool already started is replaced;
    what it was given still runs to its end.
    """
    global _fetchers, _fetch_threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    with _fetchers_lock:
        _fetch_threads = threads
        old, _fetchers = _fetchers, None
    if old is not None:
        old.shutdown(wait=False)


def _forget_fetchers() -> None:
    # A forked child has none of its parent's threads: a pool inherited
    # from before the fork would queue work that no thread ever runs.
    global _fetchers, _fetchers_lock
    _fetchers = None
    _fetchers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_fetchers)


def stall_message(timeout: Optional[float], on_dest: bool) -> str:
    """The error for a transmission that made no progress for *timeout* seconds.

    *on_dest*: it waited for the client (else for the source).
    """
    return _plan.timeout_message(timeout, on_dest)


class FileResponse:
    """A WSGI result whose body can be transmitted as a file, and how much of it."""

    __slots__ = ("result", "wrapper", "range_start", "limit", "layers", "_closed")

    def __init__(self, result: Any, wrapper: Any, range_start: Optional[int] = None,
                 limit: Optional[int] = None, layers: Tuple[Any, ...] = ()) -> None:
        self.result = result          # what the application returned (the server closes it)
        self.wrapper = wrapper        # the FileWrapper inside it
        self.range_start = range_start
        self.limit = limit            # a range's length, on top of Content-Length
        self.layers = layers          # the wrappers seen through, outermost (result) first
        self._closed = False

    @classmethod
    def of(cls, result: Any) -> Optional["FileResponse"]:
        """The file response inside *result*, or None if it must be iterated.

        Recognises fastwrap's FileWrapper, the stdlib's wsgiref FileWrapper
        around a binary file, and werkzeug's range wrapper around either
        (Flask's ``send_file`` answering a ``Range:`` request), which is sent
        by seeking to the range instead of reading up to it.  Any of these
        may sit inside wrappers that :func:`unwrap` sees through
        (``wsgiref.validate``, Werkzeug's ``ClosingIterator``, the
        :data:`WRAPPED` protocol), up to :data:`MAX_LAYERS` deep.  Anything
        else is left to plain iteration, which is always correct.

        Either way the server closes *result* (see :meth:`close`), never the
        file wrapper inside it.
        """
        layers: list[Any] = []
        inner = result
        while True:
            if _plan.is_plain_file_wrapper(inner):
                return cls(result, inner, layers=tuple(layers))
            if _is_untouched_range_wrapper(inner):
                if _plan.is_plain_file_wrapper(inner.iterable):
                    return cls(result, inner.iterable, inner.start_byte, inner.byte_range,
                               tuple(layers))
                # A wrapper between the range and the file would make werkzeug
                # skip by reading, not seek: left to iteration.
                return None
            if len(layers) == MAX_LAYERS:
                return None
            wrapped = unwrap(inner)
            if wrapped is None:
                return None
            layers.append(inner)
            inner = wrapped

    def close(self) -> None:
        """Close what the application returned, once, as PEP 3333 asks of a server.

        Only ``result.close()``: every wrapper closes what it wraps (the
        :data:`WRAPPED` protocol asks it to, the known wrappers do), so each
        layer and then the file are closed once, in the order iteration
        would have closed them.  A second call does nothing.  A server
        whose own code already closes the result (wsgiref's handlers,
        gevent's pywsgi) leaves it to that code instead: never both.
        """
        if self._closed:
            return
        self._closed = True
        close = getattr(self.result, "close", None)
        if close is not None:
            close()

    @property
    def filelike(self) -> Any:
        return self.wrapper.filelike

    def prepare(self) -> None:
        """Move to where the body starts (a range's first byte)."""
        if self.range_start is None:
            return
        wrapper = self.wrapper
        if isinstance(wrapper, _plan._wrapper_types):
            wrapper.seek(self.range_start)
        else:
            # werkzeug skips range_start bytes from where the stdlib wrapper
            # stands: seeking there is the same, without reading them.
            filelike = wrapper.filelike
            filelike.seek(filelike.tell() + self.range_start)

    def available(self) -> Optional[int]:
        """Bytes the source holds from its position, or None if unknowable (a pipe)."""
        source = _plan._unwrap_tempfile(self.filelike)
        try:
            if isinstance(source, mmap.mmap):
                return max(len(source) - source.tell(), 0)
            if not hasattr(source, "read"):  # bytes-like: the wrapper holds the position
                return max(len(_plan.byte_view(source)) - int(self.wrapper.tell()), 0)
            if isinstance(source, io.BytesIO):
                return max(source.getbuffer().nbytes - source.tell(), 0)
            if not _plan._is_fd_file(source):
                return None  # its descriptor may not hold what read() gives (gzip)
            st = os.fstat(source.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                return None  # a pipe, a device, or a /proc file of unknown size
            if source.writable():
                source.flush()
            return max(st.st_size - int(source.tell()), 0)
        except (AttributeError, OSError, ValueError):
            return None


class Framing:
    """How a file response goes on the wire: whether a body, and how long."""

    __slots__ = ("body", "count", "content_length", "expected")

    def __init__(self, body: bool, count: Optional[int],
                 content_length: Optional[int], expected: Optional[int]) -> None:
        self.body = body                      # False: headers only
        self.count = count                    # the most body bytes to send; None: to EOF
        self.content_length = content_length  # to add, when the application gave none
        self.expected = expected              # what the client was promised, if anything

    def short(self, sent: int) -> bool:
        """Whether the body came up short of what the client was promised."""
        return self.body and self.expected is not None and sent < self.expected

    @property
    def delimited(self) -> bool:
        """Whether the client can tell where the body ends without the connection closing."""
        return not self.body or self.expected is not None


def body_allowed(method: str, status: int) -> bool:
    """HTTP forbids a body in answer to HEAD, and with 1xx, 204 and 304 (RFC 9110)."""
    return method.upper() != "HEAD" and not (100 <= status < 200 or status in (204, 304))


def parse_content_length(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def frame(response: FileResponse, method: str, status: int,
          content_length: Optional[str]) -> Framing:
    """Decide the framing of *response*; call after ``response.prepare()``.

    *content_length* is the application's header, None if it gave none; a
    value that does not parse counts as none.  ``content_length`` in the
    result is the header to set in place of it, None to keep the headers as
    they are; ``delimited`` false means the body ends when the connection
    closes.
    """
    declared = parse_content_length(content_length)
    available = response.available()
    if response.limit is not None:
        available = response.limit if available is None else min(response.limit, available)
    count = available if declared is None else (
        declared if available is None else min(declared, available))
    add = None
    if declared is None and available is not None and not (
            100 <= status < 200 or status in (204, 304)):
        add = available
    expected = declared if declared is not None else add
    return Framing(body_allowed(method, status), count, add, expected)


def report_short(framing: Framing, sent: int, where: str) -> None:
    log.warning("%s: the file ended after %d of %d promised bytes; closing the connection",
                where, sent, framing.expected)


def iter_body(response: FileResponse, framing: Framing) -> Iterator[bytes]:
    """The body by iteration, for servers with no descriptor to send to.

    Follows the same rules as the fast path: never past ``framing.count``.
    """
    remaining = framing.count
    for chunk in response.wrapper:
        if isinstance(chunk, str):
            raise _plan.text_chunk_error(chunk)
        if remaining is not None:
            chunk = chunk[:remaining]
            remaining -= len(chunk)
        if chunk:
            yield chunk
        if remaining == 0:
            break


def unwrap(obj: Any) -> Optional[Any]:
    """What *obj* wraps, if it is a wrapper that adds nothing to the bytes and is untouched.

    Seen through: ``wsgiref.validate``'s iterator (once ``start_response``
    was called, before its first item and its ``close()``); Werkzeug's
    ``ClosingIterator`` (which closes what it wraps first, then its own
    callbacks); and any object whose :data:`WRAPPED` attribute names what it
    wraps.  Known classes are matched by module and name, exactly: no
    subclass (which may change the bytes), and werkzeug is never imported.
    None for anything else: it must be iterated.
    """
    cls = type(obj)
    known = _KNOWN.get((cls.__module__, cls.__qualname__))
    if known is not None:
        return known(obj)
    try:
        wrapped = getattr(obj, WRAPPED, None)
    except Exception:  # a property that fails says nothing to rely on
        return None
    if wrapped is None or wrapped is obj:
        return None
    if callable(getattr(wrapped, "close", None)) and not callable(getattr(obj, "close", None)):
        return None  # closing the result would leave what it wraps open
    return wrapped


def _validated(obj: Any) -> Optional[Any]:
    # wsgiref.validate.IteratorWrapper: check_start_response is the list
    # start_response appends to, until the first item makes it None.  With
    # start_response not yet called, iterating is what reports it.
    started = getattr(obj, "check_start_response", None)
    inner = getattr(obj, "original_iterator", None)
    if (getattr(obj, "closed", None) is not False or type(started) is not list or not started
            or inner is None or getattr(obj, "iterator", None) is not inner):
        return None
    return inner


def _closing(obj: Any) -> Optional[Any]:
    # werkzeug.wsgi.ClosingIterator keeps only next() bound to iter(iterable),
    # and, first among its callbacks, the iterable's close.
    step = getattr(obj, "_next", None)
    if not (isinstance(step, functools.partial) and step.func is next
            and len(step.args) == 1 and not step.keywords):
        return None
    inner = step.args[0]
    close = getattr(inner, "close", None)
    callbacks = getattr(obj, "_callbacks", None)
    if close is not None and not (isinstance(callbacks, list) and callbacks
                                  and callbacks[0] == close):
        return None
    return inner


_KNOWN: Dict[Tuple[str, str], Callable[[Any], Optional[Any]]] = {
    ("wsgiref.validate", "IteratorWrapper"): _validated,
    ("werkzeug.wsgi", "ClosingIterator"): _closing,
}


def _is_untouched_range_wrapper(obj: Any) -> bool:
    # werkzeug.wsgi._RangeWrapper, not yet iterated.  Matched by name so
    # that fastwrap does not import werkzeug.
    cls = type(obj)
    return (cls.__qualname__ == "_RangeWrapper" and cls.__module__ == "werkzeug.wsgi"
            and getattr(obj, "read_length", None) == 0
            and isinstance(getattr(obj, "start_byte", None), int))
