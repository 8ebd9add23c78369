"""A new client's latency while thousands of idle connections are held open.

Run from a checkout (fastwrap importable, its extension built):

    python benchmarks/idle.py [--idle 10000] [--requests 1000] [--workers 1] [--json FILE]

For each server (``fastwrap serve``, and for comparison fastwrap's threaded
WSGI server, the one ``fastwrap serve`` ran before its event-loop core), this
opens ``--idle`` connections that each send one keep-alive request for a
4 KiB file and then stay silent (what browser tabs leave behind), then times
``--requests`` requests of a new client, each on a fresh connection, with a
5 s client timeout (a request that times out counts as 5 s).  Reported:
p50, p99 and max latency, timeouts, and the server's RSS per idle connection
(its process tree's RSS with the crowd connected, less before, divided by
the crowd).  The target is a p99 under 20 ms for ``fastwrap serve`` with
10,000 idle connections.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import free_port, process_tree, rss_bytes  # noqa: E402

TIMEOUT = 5.0
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _commands(root: str, port: int, workers: int) -> Dict[str, List[str]]:
    threaded = ("import sys, fastwrap.static as s, fastwrap.wsgiref as w;"
                "h = type('H', (w.RequestHandler,), {'quiet': True});"
                f"w.make_server('127.0.0.1', {port}, s.StaticFiles(sys.argv[1]), threads=16, "
                "handler=h).serve_forever()")
    return {
        "fastwrap-serve": [sys.executable, "-m", "fastwrap", "serve", root, "--port", str(port),
                           "--quiet", "--workers", str(workers),
                           "--max-connections", "20000", "--idle-timeout", "300"],
        "threaded (before)": [sys.executable, "-c", threaded, root],
    }


def _wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server never listened")


def _one_request(port: int) -> float:
    began = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        if not received.startswith(b"HTTP/1.1 200") or len(received) < 4096:
            raise RuntimeError(f"bad answer: {received[:80]!r}")
    except socket.timeout:
        return TIMEOUT
    return time.perf_counter() - began


def measure(name: str, argv: List[str], port: int, idle: int, requests: int) -> dict:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    crowd: List[socket.socket] = []
    try:
        _wait_ready(port, proc)
        time.sleep(0.5)
        rss_before = sum(rss_bytes(pid) for pid in process_tree(proc.pid))
        for _ in range(idle):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            except OSError:
                break  # the server takes no more (the threaded one fills its backlog)
            sock.sendall(REQUEST)
            crowd.append(sock)
        time.sleep(1.0)  # let the server answer the crowd's requests and go idle
        rss_after = sum(rss_bytes(pid) for pid in process_tree(proc.pid))
        latencies = [_one_request(port) for _ in range(requests)]
        latencies.sort()
        return {
            "server": name, "idle": len(crowd), "requests": requests,
            "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
            "max_ms": latencies[-1] * 1e3,
            "timeouts": sum(1 for t in latencies if t >= TIMEOUT),
            "rss_per_idle_bytes": (rss_after - rss_before) / max(len(crowd), 1),
        }
    finally:
        for sock in crowd:
            sock.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--servers", default="fastwrap-serve,threaded (before)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle + 1000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    results = []
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "small"), "wb") as f:
            f.write(os.urandom(4096))
        for name in args.servers.split(","):
            port = free_port()
            argv = _commands(root, port, args.workers)[name]
            print(f"{name}: {args.idle} idle connections, {args.requests} new requests...",
                  file=sys.stderr, flush=True)
            row = measure(name, argv, port, args.idle, args.requests)
            results.append(row)
            print(f"  held {row['idle']}  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                  f"max {row['max_ms']:.1f} ms  timeouts {row['timeouts']}  "
                  f"RSS/idle conn {row['rss_per_idle_bytes'] / 1024:.1f} KiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
