"""Cold files on an event loop: how long the loop stalls while files come off the disk.

A file that is not in the page cache makes ``sendfile(2)`` (or a read) wait
for the disk, and on an event loop every other connection waits with it.
This measures the lag of a 1 ms ticker coroutine running on the server's own
loop (p50, p99, max of ``actual sleep - 1 ms``) while CLIENTS clients download
different cold files of SIZE each (evicted with ``POSIX_FADV_DONTNEED`` before
every run), and the download throughput, for:

- ``uvicorn``: stock uvicorn; Starlette reads the file in worker threads;
- ``fastwrap-before``: fastwrap's uvicorn protocol at BASELINE, a git
  revision from before cold files were moved off the loop, built in a
  temporary directory (``--baseline``; skipped outside a git checkout);
- ``fastwrap``: fastwrap's uvicorn protocol from this checkout.

Then the same downloads from warm files (read once before the run), for the
throughput that must not change.  Every server runs the same Starlette app
(below), one process, uvloop when installed; the client is curl.  Rounds are
interleaved and figures are medians over rounds.

Run from a checkout (src/ on PYTHONPATH, the extension built in place)::

    PYTHONPATH=src python benchmarks/coldfiles.py [--clients 8] [--size-mib 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
# The last revision whose fastwrap.uvicorn sent cold files from the loop thread.
BASELINE = "e53aabf"
SERVERS = ["uvicorn", "fastwrap-before", "fastwrap"]
TICK = 0.001


# -- the application every server runs ------------------------------------------------

def _app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    root = os.environ.get("COLDFILES_DIR", ".")
    lags: List[float] = []
    recording = [False]

    async def ticker() -> None:
        while True:
            # Not loop.time(): uvloop's clock counts whole milliseconds.
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            if recording[0]:
                lags.append(max(0.0, time.perf_counter() - before - TICK))

    async def start(request: Any) -> Any:
        lags.clear()
        recording[0] = True
        return JSONResponse({})

    async def stop(request: Any) -> Any:
        recording[0] = False
        return JSONResponse(lags)

    async def file(request: Any) -> Any:
        return FileResponse(os.path.join(root, request.path_params["name"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        task = asyncio.ensure_future(ticker())
        yield
        task.cancel()

    return Starlette(routes=[Route("/lag/start", start), Route("/lag/stop", stop),
                             Route("/files/{name}", file)], lifespan=lifespan)


if os.environ.get("COLDFILES_DIR"):
    app = _app()


# -- driving ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_baseline(rev: str, into: str) -> Optional[str]:
    """Build fastwrap at *rev* in *into*; its src/ directory, or None if impossible."""
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no baseline: git archive {rev} failed ({exc})", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into,
                   check=True, capture_output=True)
    return os.path.join(into, "src")


class Server:
    def __init__(self, name: str, files: str, pythonpath: Optional[str]) -> None:
        self.name = name
        self.port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "coldfiles:app", "--app-dir", HERE,
               "--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        if name != "uvicorn":
            cmd += ["--http", "fastwrap.uvicorn:HttpToolsProtocol"]
        env = dict(os.environ, COLDFILES_DIR=files)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/lag/stop")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.1)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def evict(paths: List[str]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def warm(paths: List[str]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def download(server: Server, names: List[str], size: int) -> Dict[str, float]:
    """All clients at once; the ticker's lag meanwhile, and the throughput."""
    server.get("/lag/start")
    started = time.monotonic()
    clients = [subprocess.Popen(["curl", "-s", "-o", os.devnull, "-w", "%{size_download}",
                                 f"http://127.0.0.1:{server.port}/files/{name}"],
                                stdout=subprocess.PIPE) for name in names]
    received = [int(c.communicate()[0] or 0) for c in clients]
    elapsed = time.monotonic() - started
    lags = sorted(server.get("/lag/stop"))
    if received != [size] * len(names):
        raise RuntimeError(f"{server.name}: short downloads {received}")
    ms = [lag * 1000 for lag in lags] or [0.0]
    return {"p50_ms": ms[len(ms) // 2], "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "max_ms": ms[-1], "ticks": len(lags), "GBps": sum(received) / elapsed / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("coldfiles: needs curl")
    size = args.size_mib << 20
    work = tempfile.mkdtemp(prefix="fastwrap-coldfiles-")
    try:
        names = [f"f{i}.bin" for i in range(args.clients)]
        paths = [os.path.join(work, name) for name in names]
        block = os.urandom(1 << 20)
        for path in paths:
            with open(path, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(block)
                os.fsync(f.fileno())
        pythonpaths: Dict[str, Optional[str]] = {"uvicorn": SRC, "fastwrap": SRC}
        baseline_dir = os.path.join(work, "baseline")
        os.mkdir(baseline_dir)
        pythonpaths["fastwrap-before"] = build_baseline(args.baseline, baseline_dir)
        servers = [s for s in SERVERS if pythonpaths[s] is not None]
        results: Dict[str, Dict[str, List[Dict[str, float]]]] = {
            s: {"cold": [], "warm": []} for s in servers}
        for round_no in range(args.rounds):
            order = servers[round_no % len(servers):] + servers[:round_no % len(servers)]
            for name in order:
                server = Server(name, work, pythonpaths[name])
                try:
                    evict(paths)
                    results[name]["cold"].append(download(server, names, size))
                    warm(paths)
                    results[name]["warm"].append(download(server, names, size))
                finally:
                    server.stop()
                print(f"round {round_no + 1}: {name}: cold {results[name]['cold'][-1]}, "
                      f"warm {results[name]['warm'][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name][kind])

    print(f"{args.clients} clients x {args.size_mib} MiB, {args.rounds} rounds, medians")
    print(f"{'server':<16} {'cold p50 ms':>11} {'p99 ms':>8} {'max ms':>8} {'cold GB/s':>9} "
          f"{'warm p99 ms':>11} {'warm GB/s':>9}")
    for name in servers:
        print(f"{name:<16} {median(name, 'cold', 'p50_ms'):>11.2f} "
              f"{median(name, 'cold', 'p99_ms'):>8.2f} {median(name, 'cold', 'max_ms'):>8.2f} "
              f"{median(name, 'cold', 'GBps'):>9.2f} {median(name, 'warm', 'p99_ms'):>11.2f} "
              f"{median(name, 'warm', 'GBps'):>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                       "python": platform.python_version(), "clients": args.clients,
                       "size_mib": args.size_mib, "baseline": args.baseline,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
