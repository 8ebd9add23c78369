"""Starlette's (and FastAPI's) ``FileResponse`` Range answers, zero-copy where the server can.

Starlette answers a ``Range`` request (``206``, one range or a
``multipart/byteranges`` body of several) by reading the file itself:
``http.response.pathsend`` had no offset nor count.  Where the server
advertises them (``scope["extensions"]["http.response.pathsend"]`` holds
``"ranges": True``, as fastwrap's uvicorn and hypercorn integrations do),
:func:`install` has ``FileResponse`` send each range as a pathsend with
``offset`` and ``count`` instead, and each part of a multipart body as one
with ``"more_body": True`` between Starlette's own part headers.  The
messages are otherwise Starlette's own (its status, headers, boundary,
part headers and separators), so the client gets the same bytes.

Nothing changes in the application: ``FastAPI``'s ``FileResponse`` and
``StaticFiles`` are Starlette's class.  The takeover is surgical and
checked rather than assumed:

- only a Starlette whose range handlers are, line for line, ones this
  module was written against (:data:`KNOWN`) is taken over; any other
  version keeps its own code, and :func:`install` says why it did not;
- per request, only when the scope advertises ranges (and, for several
  ranges, ``more_body``); HEAD, a server without the fields (stock uvicorn,
  HTTP/2, ...) and a subclass overriding the handlers get Starlette's code.

fastwrap's uvicorn and hypercorn modules call :func:`install` when they are
imported, so the line that names fastwrap's protocol enables this too.
"""
from __future__ import annotations

import contextvars
import hashlib
import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

from fastwrap import asgi

__all__ = ["KNOWN", "fingerprint", "install", "ranges_advertised", "why_not"]

#: Fingerprints (see :func:`fingerprint`) of Starlette's ``FileResponse``
#: ``_handle_single_range``, ``_handle_multiple_ranges`` and
#: ``generate_multipart``, as released in the versions named, whose answers
#: this module reproduces.  Starlette before 1.5 framed multipart bodies
#: otherwise (and mislabelled them): those versions keep their own code.
KNOWN: Dict[Tuple[str, str, str], str] = {
    ("5fae0a58a3e1ed16", "6bec5fb6eecc0595", "7e0d6be204bd1e07"): "starlette 1.5",
    ("681c4611ba648294", "bda59081217a8f63", "7e0d6be204bd1e07"): "starlette 1.10",
}

_SINGLE = ("self", "send", "start", "end", "file_size", "send_header_only")
_MULTIPLE = ("self", "send", "ranges", "file_size", "send_header_only")

#: Per request: (ranges, more_body) as the scope advertises them.
_ADVERTISED: contextvars.ContextVar[Tuple[bool, bool]] = contextvars.ContextVar(
    "fastwrap_starlette_ranges", default=(False, False))

_installed: Optional[str] = None


def ranges_advertised(scope: Dict[str, Any]) -> Tuple[bool, bool]:
    """Whether *scope*'s server takes pathsend ``offset``/``count``, and ``more_body``."""
    extensions = scope.get("extensions") or {}
    pathsend = extensions.get(asgi.PATHSEND)
    if not isinstance(pathsend, dict) or pathsend.get("ranges") is not True:
        return False, False
    return True, pathsend.get("more_body") is True


def fingerprint(function: Callable[..., Any]) -> str:
    """A function's source, lines stripped, blank and comment lines left out, hashed.

    The same for the same code whatever the Python version (bytecode is not).
    """
    lines = (line.strip() for line in inspect.getsource(function).splitlines())
    text = "\n".join(line for line in lines if line and not line.startswith("#"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def install() -> Optional[str]:
    """Take over ``FileResponse``'s range answers; None when done, else why not.

    Idempotent.  Without Starlette installed, or with a version whose range
    handlers are not known here, nothing is changed and the reason is
    returned (fastwrap's servers log it at debug level).
    """
    global _installed
    if _installed is not None:
        return None if _installed == "installed" else _installed
    _installed = _take_over()
    return None if _installed == "installed" else _installed


def why_not() -> Optional[str]:
    """Why the installed Starlette's range answers cannot be taken over; None if they can.

    Changes nothing (:func:`install` does the taking over).
    """
    if _installed == "installed":
        return None
    try:
        from starlette import responses
    except ImportError:
        return "Starlette is not installed"
    return _unknown(responses.FileResponse)


def _take_over() -> str:
    reason = why_not()
    if reason is not None:
        return reason
    from starlette import responses
    _patch(responses.FileResponse, responses)
    return "installed"


def _unknown(cls: Any) -> Optional[str]:
    """Why *cls*'s range handlers are not ones this module reproduces, or None."""
    names = ("_handle_single_range", "_handle_multiple_ranges", "generate_multipart")
    if not all(hasattr(cls, name) for name in names):
        return "this Starlette's FileResponse has no range handlers"
    functions: List[Callable[..., Any]] = [getattr(cls, name) for name in names]
    try:
        found = tuple(fingerprint(function) for function in functions)
    except (OSError, TypeError):
        return "this Starlette's source is not installed, so it cannot be checked"
    if found not in KNOWN:
        return "this Starlette's range handlers are not ones fastwrap knows"
    # How __call__ calls them, and with what: the handlers' own signatures.
    signatures = [tuple(inspect.signature(function).parameters) for function in functions[:2]]
    if signatures != [_SINGLE, _MULTIPLE] or not all(
            asgi.refers_to(cls.__call__, name) for name in names[:2]):
        return "this Starlette's FileResponse calls its range handlers otherwise"
    return None


def _patch(cls: Any, responses: Any) -> None:
    stock_call = cls.__call__
    stock_single = cls._handle_single_range
    stock_multiple = cls._handle_multiple_ranges
    MutableHeaders = responses.MutableHeaders
    token_hex = responses.token_hex

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        advertised = ranges_advertised(scope) if scope.get("type") == "http" else (False, False)
        token = _ADVERTISED.set(advertised)
        try:
            await stock_call(self, scope, receive, send)
        finally:
            _ADVERTISED.reset(token)

    async def _handle_single_range(self: Any, send: Any, start: int, end: int,
                                   file_size: int, send_header_only: bool) -> None:
        if send_header_only or not _ADVERTISED.get()[0]:
            await stock_single(self, send, start, end, file_size, send_header_only)
            return
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-range"] = f"bytes {start}-{end - 1}/{file_size}"
        headers["content-length"] = str(end - start)
        await send({"type": "http.response.start", "status": 206, "headers": headers.raw})
        await send({"type": asgi.PATHSEND, "path": str(self.path), "offset": start,
                    "count": end - start})

    async def _handle_multiple_ranges(self: Any, send: Any, ranges: List[Tuple[int, int]],
                                      file_size: int, send_header_only: bool) -> None:
        if send_header_only or _ADVERTISED.get() != (True, True):
            await stock_multiple(self, send, ranges, file_size, send_header_only)
            return
        boundary = token_hex(13)  # as Starlette draws it
        content_length, header_generator = self.generate_multipart(
            ranges, boundary, file_size, self.headers["content-type"])
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-type"] = f"multipart/byteranges; boundary={boundary}"
        headers["content-length"] = str(content_length)
        await send({"type": "http.response.start", "status": 206, "headers": headers.raw})
        path = str(self.path)
        for start, end in ranges:
            await send({"type": "http.response.body", "body": header_generator(start, end),
                        "more_body": True})
            await send({"type": asgi.PATHSEND, "path": path, "offset": start,
                        "count": end - start, "more_body": True})
            await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": f"--{boundary}--".encode("latin-1"),
                    "more_body": False})

    for function in (__call__, _handle_single_range, _handle_multiple_ranges):
        stock = getattr(cls, function.__name__)
        function.__qualname__ = stock.__qualname__
        function.__doc__ = (stock.__doc__ or "") + (
            "\n\n(fastwrap: zero-copy by pathsend where the server advertises ranges.)")
        setattr(cls, function.__name__, function)
