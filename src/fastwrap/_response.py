"""fastwrap.transmit: send any WSGI response iterable, the fast way when it can."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from . import _plan


def make_transmit(transmit_file: Callable[..., int]) -> Callable[..., int]:
    """Bind the response sender to one engine's blocking file transmission."""

    def transmit(dest: Any, result: Iterable[bytes], count: Optional[int] = None,
                 headers: Any = b"") -> int:
        """Send a WSGI response body (after *headers*) to *dest*; return body bytes sent.

        A fastwrap ``FileWrapper``, or a ``wsgiref.util.FileWrapper`` around a
        binary file, is transmitted from its current position along the
        fastest path; any other iterable is sent chunk by chunk.  Never more
        than *count* body bytes leave.  The caller still owns *result* and
        calls its ``close()``, as PEP 3333 asks of servers.
        """
        limit = _plan.check_count(count)
        if _plan.is_plain_file_wrapper(result):
            return transmit_file(result, dest, count, headers)
        sent = 0
        for chunk in result:
            if isinstance(chunk, str):
                raise TypeError(
                    "the response iterable yielded str: WSGI bodies must be bytes")
            body: Any = chunk
            if limit >= 0:  # bytes, not items: an array of ints counts 4 a piece
                body = _plan.byte_view(chunk)[:limit - sent]
            if body or headers:
                sent += transmit_file(body, dest, None, headers)
                headers = b""
            if sent == limit:
                break
        if headers:  # an empty body: the headers still go
            transmit_file(b"", dest, None, headers)
        return sent

    return transmit
