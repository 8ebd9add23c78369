"""A stand-in for ``fastwrap serve --workers N``: the real supervisor, simple workers.

``python _serve_workers.py ROOT WORKERS GRACE`` runs
``fastwrap.server.workers.supervise`` with, in each worker, fastwrap's
threaded wsgiref server (``fastwrap.wsgiref.Server``) on the socket the
supervisor hands it, serving ``StaticFiles(ROOT)``.  The worker stops as the
supervisor expects of any: a first SIGINT or SIGTERM stops accepting and lets
the connections it has finish within GRACE seconds, a second SIGINT ends it
at once.  It prints the lines ``fastwrap serve`` prints, so the tests read
both the same way.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import fastwrap
from fastwrap import wsgiref
from fastwrap.server import workers
from fastwrap.static import StaticFiles


class StandIn(wsgiref.Server):
    """fastwrap's threaded server on a socket bound and listening already,
    with the ``run(sock)`` and ``stop()`` the supervisor expects."""

    def __init__(self, root: str, grace: float) -> None:
        self.grace = grace
        self.busy = 0
        self.busy_lock = threading.Lock()
        self.stopping = threading.Event()
        # Bound to port 0 and never listening: run() puts the worker's socket in its place.
        super().__init__(("127.0.0.1", 0), wsgiref.RequestHandler, 16)
        self.set_app(StaticFiles(root))
        self.timeout = 0.05  # how often handle_request() looks at self.stopping

    def server_activate(self) -> None:
        pass

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.busy_lock:
            self.busy += 1
        try:
            super().finish_request(request, client_address)
        finally:
            with self.busy_lock:
                self.busy -= 1

    def stop(self) -> None:
        self.stopping.set()

    def run(self, sock: socket.socket) -> None:
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_port = self.server_address[1]
        self.setup_environ()

        signalled = []  # signals, apart from stop() calls: the second SIGINT means at once

        def on_signal(number: int, frame: Any) -> None:
            if signalled and number == signal.SIGINT:
                os._exit(1)
            signalled.append(number)
            self.stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not self.stopping.is_set():
            self.handle_request()
        self.socket.close()  # accept no more
        deadline = time.monotonic() + self.grace
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        self.server_close()


def main() -> int:
    root, count, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    def announce(address: Any) -> None:
        print(f"Serving {os.path.realpath(root)} at http://{address[0]}:{address[1]}/ "
              f"(fastwrap {fastwrap.__version__}, {fastwrap.IMPLEMENTATION} engine, "
              f"standin loop, 16 threads, {count} workers)", file=sys.stderr, flush=True)

    return workers.supervise(lambda: StandIn(root, grace), "127.0.0.1", 0, count, grace,
                             announce=announce)


if __name__ == "__main__":
    sys.exit(main())
