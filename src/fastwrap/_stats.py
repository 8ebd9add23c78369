"""What this process has sent, per path: the proof that the fast path was taken."""
from __future__ import annotations

import threading

from ._paths import PATHS

_lock = threading.Lock()
_counts: dict[str, list[int]] = {path: [0, 0, 0] for path in PATHS}

_TRANSMISSIONS, _BYTES, _FALLBACKS = range(3)


def record(path: str, sent: int) -> None:
    """One transmission ended on *path* after *sent* body bytes."""
    with _lock:
        entry = _counts[path]
        entry[_TRANSMISSIONS] += 1
        entry[_BYTES] += sent


def record_fallback(path: str) -> None:
    """*path* gave up before its first byte and handed over to the next."""
    with _lock:
        _counts[path][_FALLBACKS] += 1


def stats() -> dict[str, dict[str, int]]:
    """Per path: transmissions ended on it, body bytes it sent, and fallbacks from it.

    Counts this process only (each gunicorn worker has its own).
    """
    with _lock:
        return {
            path: {"transmissions": c[_TRANSMISSIONS], "bytes": c[_BYTES],
                   "fallbacks": c[_FALLBACKS]}
            for path, c in _counts.items()
        }


def reset_stats() -> None:
    """Start counting from zero (for tests and benchmarks)."""
    with _lock:
        for entry in _counts.values():
            entry[:] = [0, 0, 0]
