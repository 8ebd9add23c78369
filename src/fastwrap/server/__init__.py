"""The event-loop server behind ``fastwrap serve``.

``Server(Config(root=...)).run(sock)`` serves the files under *root* on a
bound, listening socket until :meth:`Server.stop` (or SIGTERM/SIGINT in the
main thread): every rule of :class:`fastwrap.static.StaticFiles`, every body
through :class:`fastwrap.Transmission`, on uvloop when it is installed.
Several processes may each run a server on the same socket:
``run(config, host, port, workers)`` forks them and watches over them.
"""
from __future__ import annotations

from .config import LOOPS, Config
from .core import SERVER_SOFTWARE, Server, loop_name
from .workers import run

__all__ = ["Config", "LOOPS", "SERVER_SOFTWARE", "Server", "loop_name", "run"]
