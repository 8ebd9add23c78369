"""What a :class:`fastwrap.server.Server` serves, and the limits it keeps."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Config", "LOOPS"]

#: The event loops a server can run on: ``"auto"`` takes uvloop when it imports.
LOOPS = ("auto", "uvloop", "asyncio")


@dataclass
class Config:
    """The directory a server serves, its limits, and how it stops.

    Times are in seconds.  Every limit protects the server from clients that
    hold what it has without using it: an idle or trickling connection costs
    a descriptor and a few hundred bytes, never a thread, and is closed once
    its time is up.
    """

    #: The directory served (its files through :class:`fastwrap.static.StaticFiles`).
    root: str = "."
    #: Serve files whose symbolic links lead out of *root*.
    follow_symlinks: bool = False
    #: No access log.
    quiet: bool = False
    #: Time to receive a whole request head from its first byte (a trickling
    #: client is answered 408 and closed).
    head_timeout: float = 10.0
    #: Time a keep-alive connection may wait idle for its next request.
    idle_timeout: float = 30.0
    #: Time a response may make no progress (a client that stopped reading).
    send_timeout: float = 60.0
    #: Largest request head in bytes: 414 when the request line alone is
    #: longer, 431 for the whole head.
    max_head: int = 65536
    #: Connections served at once; beyond, new ones wait in the listen backlog.
    max_connections: int = 4096
    #: On a graceful stop, time the responses in flight have to finish.
    grace: float = 10.0
    #: Threads reading the parts of files not in the page cache, so that the
    #: event loop never waits for the disk.
    threads: int = 16
    #: The event loop: one of :data:`LOOPS`.
    loop: str = "auto"
    #: Files whose response heads are kept (validated by a stat on every use).
    cache_entries: int = 1024

    def __post_init__(self) -> None:
        for name in ("head_timeout", "idle_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
        if self.grace < 0:
            raise ValueError(f"grace must be 0 seconds or more, got {self.grace}")
        for name in ("max_head", "max_connections", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_head < 64:
            raise ValueError(f"max_head must be at least 64 bytes, got {self.max_head}")
        if self.cache_entries < 0:
            raise ValueError(f"cache_entries must be 0 or more, got {self.cache_entries}")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {self.loop!r}")
