"""Throughput and per-transmission cost of fastwrap's engines against the stdlib.

Run from a checkout with fastwrap installed:

    python benchmarks/core.py [--size-mib 256] [--rounds 5]

A separate process drains a TCP loopback connection, so the sender's GIL and
CPU are its own.  Rounds are interleaved; each figure is the median of the
rounds with its min-max, and the ratios are against a baseline measured in
the same run.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wsgiref.util

import fastwrap
from fastwrap import _purepy

try:
    from fastwrap import _fastwrap
except ImportError:
    _fastwrap = None

DRAIN = r"""
import socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
buf = bytearray(1 << 20)
while True:
    conn, _ = srv.accept()
    while conn.recv_into(buf):
        pass
    conn.close()
"""


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def large_file_ways(f):
    def wsgiref_loop(sock):
        f.seek(0)
        for chunk in wsgiref.util.FileWrapper(f, 8192):
            sock.sendall(chunk)

    def stdlib_sendfile(sock):
        f.seek(0)
        sock.sendfile(f)

    ways = {"wsgiref FileWrapper + sendall": wsgiref_loop,
            "socket.sendfile": stdlib_sendfile}
    for name, engine in (("cython", _fastwrap), ("python", _purepy)):
        if engine is None:
            continue

        def run(sock, engine=engine):
            f.seek(0)
            engine.FileWrapper(f).transmit(sock)
        ways[f"fastwrap {name}"] = run
    return ways


def measure_large(port: int, path: str, size: int, rounds: int) -> dict:
    results: dict = {}
    with open(path, "rb") as f:
        ways = large_file_ways(f)
        for _ in range(rounds):
            for name, way in ways.items():
                sock = connect(port)
                t0, c0 = time.perf_counter(), cpu()
                way(sock)
                t1, c1 = time.perf_counter(), cpu()
                sock.close()
                entry = results.setdefault(name, {"gbps": [], "cpu_s_per_gb": []})
                entry["gbps"].append(size / (t1 - t0) / 1e9)
                entry["cpu_s_per_gb"].append((c1 - c0) / (size / 1e9))
    return results


def measure_small(port: int, path: str, n: int, rounds: int) -> dict:
    results: dict = {}
    with open(path, "rb") as f:
        ways = {
            "socket.sendfile": lambda sock: (f.seek(0), sock.sendfile(f)),
        }
        for name, engine in (("cython", _fastwrap), ("python", _purepy)):
            if engine is not None:
                ways[f"fastwrap {name}"] = (
                    lambda sock, e=engine: (f.seek(0), e.FileWrapper(f).transmit(sock)))
        for _ in range(rounds):
            for name, way in ways.items():
                sock = connect(port)
                t0 = time.perf_counter()
                for _ in range(n):
                    way(sock)
                t1 = time.perf_counter()
                sock.close()
                results.setdefault(name, {"us_per_transmission": []})[
                    "us_per_transmission"].append((t1 - t0) / n * 1e6)
    return results


def summary(values: list) -> str:
    return f"{statistics.median(values):8.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(title: str, results: dict, key: str, baseline: str, higher_is_better: bool):
    print(f"\n{title}  ({key}: median [min-max]; ratio against {baseline!r})")
    base = statistics.median(results[baseline][key])
    for name, entry in results.items():
        med = statistics.median(entry[key])
        ratio = med / base if higher_is_better else base / med
        print(f"  {name:32} {summary(entry[key])}   x{ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small-count", type=int, default=5000)
    args = parser.parse_args()
    print(f"fastwrap {fastwrap.__version__} ({fastwrap.IMPLEMENTATION}), "
          f"Python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().release}")
    drain = subprocess.Popen([sys.executable, "-c", DRAIN], stdout=subprocess.PIPE, text=True)
    try:
        port = int(drain.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            large = os.path.join(tmp, "large")
            with open(large, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(1 << 20))
            small = os.path.join(tmp, "small")
            with open(small, "wb") as f:
                f.write(os.urandom(4096))
            big = measure_large(port, large, args.size_mib << 20, args.rounds)
            report(f"{args.size_mib} MiB from page cache over TCP loopback", big,
                   "gbps", "socket.sendfile", True)
            report("", big, "cpu_s_per_gb", "wsgiref FileWrapper + sendall", False)
            tiny = measure_small(port, small, args.small_count, args.rounds)
            report(f"{args.small_count} transmissions of 4 KiB on one connection", tiny,
                   "us_per_transmission", "socket.sendfile", False)
    finally:
        drain.kill()
        drain.wait()


if __name__ == "__main__":
    main()
