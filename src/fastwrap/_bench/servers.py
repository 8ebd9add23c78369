"""The HTTP servers measured against each other, and a sample of their requests per second."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from .children import RUN_MODULE_CODE, WSGIREF_CODE, Children, Helper, _tail
from .model import START_TIMEOUT, BenchError, Sample


# -- the servers ------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log: str
    pattern: str               # finds the port in its log
    port: int = 0
    note: str = ""


def start_servers(children: Children, root: str) -> list[Server]:
    """fastwrap serve, python -m http.server and wsgiref.simple_server, all on free ports."""
    python = sys.executable
    fastwrap_serve = children.start(
        "fastwrap serve", [python, "-c", RUN_MODULE_CODE, "fastwrap", "serve", root,
                           "--port", "0", "--quiet"])
    # -u: http.server prints where it listens without flushing.
    http_server = children.start(
        "http.server", [python, "-u", "-c", RUN_MODULE_CODE, "http.server", "--bind",
                        "127.0.0.1", "--directory", root, "0"],
        stdout_to_log=True, stderr_to_log=False)
    wsgiref_server = children.start(
        "wsgiref", [python, "-c", WSGIREF_CODE, root], stdout_to_log=True, stderr_to_log=False)
    return [
        Server("fastwrap serve", fastwrap_serve, children.log("fastwrap serve"),
               r"at http://127\.0\.0\.1:(\d+)/"),
        Server("http.server", http_server, children.log("http.server"), r"port (\d+)"),
        Server("wsgiref", wsgiref_server, children.log("wsgiref"), r"port (\d+)"),
    ]


def wait_until_listening(server: Server) -> None:
    """Read the server's port from its log, where it says it is serving."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        text = _tail(server.log, 4000)
        found = re.search(server.pattern, text)
        if found:
            server.port = int(found.group(1))
            engine = re.search(r"(\w+) engine, (\d+) threads", text)
            if engine:
                server.note = f"{engine.group(1)} engine, {engine.group(2)} threads"
            return
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with status {server.process.returncode} "
                             f"before listening: {text[-400:]}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"{server.name} did not say where it listens in {START_TIMEOUT:.0f} s")
        time.sleep(0.02)


def http_sample(clients: list[Helper], port: int, path: str, size: int,
                seconds: float) -> Sample:
    """Requests per second of all clients together, each on its own connection."""
    order = json.dumps({"port": port, "path": path, "size": size, "seconds": seconds})
    for client in clients:
        client.send_line(order)
    results = [json.loads(client.read_line()) for client in clients]
    for result in results:
        if "error" in result:
            raise BenchError(str(result["error"]))
    rate = sum(float(r["requests"]) / float(r["seconds"]) for r in results)
    return Sample({"requests_per_s": rate})
