"""A 256 MiB file from the page cache: stock hypercorn against ``python -m fastwrap.hypercorn``.

Run from a checkout (src/ on PYTHONPATH, the extension built in place):

    pip install 'hypercorn>=0.17' uvloop starlette
    PYTHONPATH=src python benchmarks/hypercorn_bench.py [--rounds 3] [--seconds 3] [--json out.json]
    PYTHONPATH=src python benchmarks/hypercorn_bench.py --ranges ...

``--ranges`` fetches a 64 MiB file as 16 ranges of 4 MiB instead (one per
request, in turn): stock Starlette reads each range in Python, through
fastwrap each leaves as a pathsend with offset and count.

Both servers run the Starlette app of asgi.py (``StaticFiles`` over one
directory) with hypercorn's command line, one worker process, on hypercorn's
asyncio and uvloop workers.  Stock hypercorn advertises no file extension,
so Starlette's ``FileResponse`` reads the file itself, 64 KiB at a time in a
worker thread, and hypercorn writes each piece; through fastwrap it sends
``http.response.pathsend`` and the body leaves by sendfile(2).

The client is splice_client.c (one keep-alive connection, bodies moved
socket -> pipe -> /dev/null with splice(2)), run for a fixed time per
server.  Rounds are interleaved, in an order that rotates from round to
round; figures are medians of the rounds (with min-max), and the ratios are
taken within each round.  Server CPU is user+system time of the server's
process tree (hypercorn's parent and its worker) per GB delivered.
(Not named hypercorn.py: the servers run with this directory on their path,
where ``python -m hypercorn`` would find it instead of hypercorn.)
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional

import asgi  # this directory's ASGI benchmark: its app, client and measures

SIZE = 256 << 20
NAME = "256MiB"
#: --ranges: the file, and what the client asks of it (see asgi.RANGE_LOADS).
RANGES_SIZE, RANGES_NAME, RANGES_LOAD = 64 << 20, "64MiB", "16x4MiB"
CONNECTIONS = 1
WORKERS = ["asyncio", "uvloop"]
TARGETS = {"gb_s": 1.5, "cpu_s_per_gb": 0.5}  # fastwrap / stock: at least, at most


class Server:
    def __init__(self, fastwrap: bool, worker: str, root: str, tmp: str) -> None:
        self.name = f"{'fastwrap' if fastwrap else 'stock'}-{worker}"
        self.port = asgi.free_port()
        env = dict(os.environ, FASTWRAP_BENCH_ROOT=root, PYTHONPATH=os.pathsep.join(
            p for p in (asgi.HERE, asgi.SRC, os.environ.get("PYTHONPATH")) if p))
        argv = [sys.executable, "-m", "fastwrap.hypercorn" if fastwrap else "hypercorn",
                "asgi:app", "--bind", f"127.0.0.1:{self.port}", "--worker-class", worker,
                "--workers", "1", "--log-level", "warning"]
        self.log = open(os.path.join(tmp, f"{self.name}.log"), "wb")
        self.process = subprocess.Popen(argv, cwd=asgi.HERE, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url("/__stats__"), timeout=2) as response:
                    response.read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer") from None
                time.sleep(0.1)

    def check(self, digest: str) -> None:
        """Refuse to measure a server that does not send the right bytes."""
        with urllib.request.urlopen(self.url("/" + FILE[0]), timeout=120) as response:
            sha = hashlib.sha256()
            while True:
                piece = response.read(1 << 20)
                if not piece:
                    break
                sha.update(piece)
        if sha.hexdigest() != digest:
            raise RuntimeError(f"{self.name} sent wrong bytes")

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(self.url("/__stats__"), timeout=10) as response:
            result: Dict[str, Any] = json.loads(response.read())["stats"]
            return result

    def stop(self) -> None:
        if self.log.closed:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(15)
        self.log.close()


#: The file measured and the client's extra arguments (set by --ranges).
FILE: List[Any] = [NAME, SIZE, []]


def measure(client: str, server: Server, seconds: float) -> Dict[str, float]:
    cpu_before = asgi.tree_cpu_seconds(server.process.pid)
    argv = [client, "-p", str(server.port), "-u", "/" + FILE[0], "-c", str(CONNECTIONS),
            "-d", str(seconds), *FILE[2]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 300)
    cpu = asgi.tree_cpu_seconds(server.process.pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"client failed on {server.name}: {done.stderr.strip()}")
    result = json.loads(done.stdout)
    gb = result["body_bytes"] / 1e9
    return {"gb_s": gb / result["seconds"], "cpu_s_per_gb": cpu / gb if gb else float("nan")}


def make_file(root: str) -> str:
    digest = hashlib.sha256()
    with open(os.path.join(root, FILE[0]), "wb") as f:
        for _ in range(FILE[1] >> 20):
            piece = os.urandom(1 << 20)
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", default=",".join(WORKERS))
    parser.add_argument("--ranges", action="store_true",
                        help="a 64 MiB file as 16 ranges of 4 MiB, one per request")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.ranges:
        FILE[:] = [RANGES_NAME, RANGES_SIZE, asgi.RANGE_LOADS[RANGES_LOAD]]

    with tempfile.TemporaryDirectory(prefix="fastwrap-hypercorn-bench-") as tmp:
        root = os.path.join(tmp, "files")
        os.makedirs(root)
        digest = make_file(root)
        client = asgi.build_client(tmp)
        servers: Dict[str, Server] = {}
        try:
            for worker in args.workers.split(","):
                for fastwrap in (False, True):
                    server = Server(fastwrap, worker, root, tmp)
                    servers[server.name] = server
                    server.check(digest)  # also reads the file into the page cache
            for server in servers.values():  # warm up
                measure(client, server, 0.5)
            before = {name: s.stats() for name, s in servers.items() if "fastwrap" in name}
            rounds: List[Dict[str, Dict[str, float]]] = []
            for number in range(args.rounds):
                names = list(servers)
                names = names[number % len(names):] + names[:number % len(names)]
                rounds.append({name: measure(client, servers[name], args.seconds)
                               for name in names})
                print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
            after = {name: servers[name].stats() for name in before}
        finally:
            for server in servers.values():
                server.stop()

    report = summarise(rounds, before, after, args)
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def summarise(rounds: List[Dict[str, Dict[str, float]]], before: Dict[str, Any],
              after: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    table = {name: {metric: asgi.median_spread([r[name][metric] for r in rounds])
                    for metric in ("gb_s", "cpu_s_per_gb")} for name in rounds[0]}
    ratios: Dict[str, Dict[str, float]] = {}
    targets: Dict[str, bool] = {}
    for worker in args.workers.split(","):
        ours, stock = f"fastwrap-{worker}", f"stock-{worker}"
        for metric, target in TARGETS.items():
            key = f"{worker} {metric} fastwrap / stock"
            ratios[key] = asgi.median_spread([r[ours][metric] / r[stock][metric]
                                              for r in rounds])
            met = ratios[key]["median"]
            targets[key] = met >= target if metric == "gb_s" else met <= target
    paths = {name: {p: after[name][p]["bytes"] - before[name][p]["bytes"]
                    for p in after[name] if after[name][p]["bytes"] != before[name][p]["bytes"]}
             for name in after}
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "processor": platform.machine(),
                    "load_average": os.getloadavg()},
        "file": FILE[0] + (f" as {RANGES_LOAD} ranges" if FILE[2] else ""), "rounds": args.rounds, "seconds": args.seconds,
        "connections": CONNECTIONS, "table": table, "ratios": ratios, "targets": targets,
        "fastwrap_bytes_by_path": paths,
    }


def render(report: Dict[str, Any]) -> str:
    lines = [f"{report['date']}, {report['machine']}, {report['file']}, {report['rounds']} "
             f"rounds x {report['seconds']} s, {report['connections']} connection", ""]
    header = f"{'server':18} {'GB/s':>20} {'CPU-s/GB':>20}"
    lines += [header, "-" * len(header)]

    def cell(d: Dict[str, float]) -> str:
        return f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"

    for name in sorted(report["table"]):
        m = report["table"][name]
        lines.append(f"{name:18} {cell(m['gb_s']):>20} {cell(m['cpu_s_per_gb']):>20}")
    lines += ["", "same-round ratios (median, min-max):"]
    for key, v in report["ratios"].items():
        mark = "target met" if report["targets"][key] else "target MISSED"
        lines.append(f"  {key}: {cell(v)}  {mark}")
    lines.append(f"fastwrap body bytes by path: {report['fastwrap_bytes_by_path']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
