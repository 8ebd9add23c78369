"""What a file's response head needs, kept per request path and checked on every use.

A hit saves what the first request paid for: the checks of the path and of
where its links lead, the type, the validators and the head's bytes.  It is
only possible for the very file that passed those checks: each use stats the
path again and compares device, inode, size, modification and change times,
so a file changed in place, replaced by rename or removed is a miss, and a
miss runs every check of :class:`fastwrap.static.StaticFiles` again.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Dict, Optional, Tuple

from .. import static

__all__ = ["Entry", "HeadCache", "identity"]

_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
               # Should the path have become a FIFO since the stat, the open must not block.
               | getattr(os, "O_NONBLOCK", 0))

Identity = Tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """What tells one version of a file from another: any change changes it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Entry:
    """One file's cached facts: where the request leads, its identity, its 200 head."""

    __slots__ = ("named", "identity", "info", "tail")

    def __init__(self, named: str, info: static.FileInfo, server: str) -> None:
        self.named = named
        self.identity = identity(info.stat)
        self.info = info
        # The 200's head after its Date: everything but the Date and Connection.
        self.tail = (f"\r\nServer: {server}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in static.file_headers(info))
        ).encode("latin-1")


class HeadCache:
    """At most *size* entries, the oldest dropped first."""

    def __init__(self, size: int, server: str) -> None:
        self.size = size
        self._server = server
        self._entries: Dict[str, Entry] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str, open_file: bool) -> Optional[Tuple[Entry, Any]]:
        """The entry for *key* if its file is unchanged, with the file open if *open_file*.

        The file is opened by the path and checked again by its descriptor,
        so what is sent is the file that was checked even if the path
        changes in between.
        """
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        try:
            if identity(os.stat(entry.named)) != entry.identity:
                raise FileNotFoundError
            if not open_file:
                self.hits += 1
                return entry, None
            fd = os.open(entry.named, _OPEN_FLAGS)
        except OSError:
            del self._entries[key]
            self.misses += 1
            return None
        try:
            st = os.fstat(fd)
            if identity(st) != entry.identity or not stat.S_ISREG(st.st_mode):
                os.close(fd)
                del self._entries[key]
                self.misses += 1
                return None
            f = open(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        self.hits += 1
        return entry, f

    def store(self, key: str, named: str, info: static.FileInfo) -> None:
        """Remember the file *info* that *key* led to through *named*, after every check."""
        if self.size == 0:
            return
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = Entry(named, info, self._server)
