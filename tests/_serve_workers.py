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


class _OnSocket(wsgiref.Server):
    """fastwrap's threaded server on a socket bound and listening already."""

    def __init__(self, sock: socket.socket, app: Any) -> None:
        self._given = sock
        self.busy = 0
        self.busy_lock = threading.Lock()
        super().__init__(sock.getsockname()[:2], wsgiref.RequestHandler, 16)
        self.set_app(app)

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self._given
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]
        self.setup_environ()

    def server_activate(self) -> None:
        pass  # listening already

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.busy_lock:
            self.busy += 1
        try:
            super().finish_request(request, client_address)
        finally:
            with self.busy_lock:
                self.busy -= 1


def serve_one(root: str, grace: float) -> Any:
    def serve(sock: socket.socket) -> None:
        server = _OnSocket(sock, StaticFiles(root))
        stopping = []

        def on_signal(number: int, frame: Any) -> None:
            if stopping:
                if number == signal.SIGINT:
                    os._exit(1)
                return
            stopping.append(number)
            threading.Thread(target=server.shutdown).start()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        server.serve_forever()
        server.socket.close()  # accept no more
        deadline = time.monotonic() + grace
        while server.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        server.server_close()
    return serve


def main() -> int:
    root, count, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    def announce(address: Any) -> None:
        print(f"Serving {os.path.realpath(root)} at http://{address[0]}:{address[1]}/ "
              f"(fastwrap {fastwrap.__version__}, {fastwrap.IMPLEMENTATION} engine, "
              f"16 threads, {count} workers)", file=sys.stderr, flush=True)

    return workers.supervise(serve_one(root, grace), "127.0.0.1", 0, count, grace,
                             announce=announce)


if __name__ == "__main__":
    sys.exit(main())
