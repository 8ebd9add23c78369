"""ASGI file serving: stock uvicorn, uvicorn with fastwrap's protocol, Granian, nginx.

Run from a checkout (src/ on PYTHONPATH, the extension built in place):

    pip install uvicorn httptools uvloop starlette granian
    PYTHONPATH=src python benchmarks/asgi.py [--rounds 3] [--seconds 3] [--json out.json]

Every Python server serves the same Starlette app (``StaticFiles`` over one
directory, defined at the bottom of this file), one worker process each, on
uvloop; nginx serves the same directory with ``sendfile on``, one worker.
Starlette's ``FileResponse`` sends ``http.response.pathsend`` to the servers
that advertise it: uvicorn with ``--http fastwrap.uvicorn:HttpToolsProtocol``
and Granian.  Stock uvicorn advertises nothing, so Starlette reads the file
itself, 64 KiB at a time in a worker thread.

The client is splice_client.c from this directory (keep-alive, bodies moved
socket -> pipe -> /dev/null with splice(2), so it is not the bottleneck),
run for a fixed time per (server, file).  Rounds are interleaved: each round
measures every server on every file, in an order that rotates from round to
round, so slow drifts of a shared machine hit all servers alike; figures are the median of the rounds with their min-max,
and the ratios are computed within each round, then summarised the same way.
Server CPU is the user+system time of the server's whole process tree during
the measurement, per GB of body delivered.

The range rows fetch the 64 MiB file as 16 ranges of 4 MiB (``16x4MiB``: one
range per request, in turn; ``16x4MiB-multipart``: all 16 in one
``multipart/byteranges`` response).  Stock Starlette reads each range in
Python; under fastwrap's protocol ``fastwrap.starlette`` has it send each as
a pathsend with offset and count.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
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
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

SIZES = {"4KiB": 4096, "1MiB": 1 << 20, "64MiB": 64 << 20}
_PART = 4 << 20
#: Range rows: the 64 MiB file fetched as 16 ranges of 4 MiB, by 16 requests of
#: one range each (as a download accelerator does), or in one multipart/byteranges
#: response of 16 parts (each a byte short of 4 MiB: Starlette merges adjacent ranges).
RANGE_LOADS = {
    "16x4MiB": ["-r", f"{_PART}:16"],
    "16x4MiB-multipart": ["-H", "Range: bytes=" + ",".join(
        f"{k * _PART}-{(k + 1) * _PART - 2}" for k in range(16))],
}
# Concurrent keep-alive connections per load: enough to keep a one-process
# server busy without measuring queueing alone.
CONNECTIONS = {"4KiB": 16, "1MiB": 8, "64MiB": 2, "16x4MiB": 2, "16x4MiB-multipart": 2}

SERVERS = ["uvicorn", "uvicorn+fastwrap", "granian", "nginx"]

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
}}
"""


# -- helpers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def which(name: str) -> Optional[str]:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def tree_cpu_seconds(root: int) -> float:
    """User+system CPU of *root* and all its descendants (alive ones), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        todo += children.get(pid, [])
    return total


def median_spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def build_client(tmp: str) -> str:
    cc = os.environ.get("CC") or which("cc") or which("gcc")
    if cc is None:
        raise SystemExit("no C compiler found for splice_client.c")
    out = os.path.join(tmp, "splice_client")
    subprocess.run([cc, "-O2", "-pthread", "-o", out, os.path.join(HERE, "splice_client.c")],
                   check=True)
    return out


def make_files(root: str) -> Dict[str, str]:
    """The files, written once and read once so every server serves them from memory."""
    digests = {}
    for name, size in SIZES.items():
        path = os.path.join(root, name)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                piece = os.urandom(min(left, 1 << 20))
                f.write(piece)
                digest.update(piece)
                left -= len(piece)
        digests[name] = digest.hexdigest()
    return digests


# -- servers ----------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, root: str, tmp: str) -> None:
        self.name = name
        self.port = free_port()
        env = dict(os.environ, FASTWRAP_BENCH_ROOT=root,
                   PYTHONPATH=os.pathsep.join(p for p in (HERE, SRC, os.environ.get("PYTHONPATH"))
                                              if p))
        py = sys.executable
        port = str(self.port)
        uvicorn = [py, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", port,
                   "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
        if name == "uvicorn":
            argv = uvicorn + ["--http", "httptools"]
        elif name == "uvicorn+fastwrap":
            argv = uvicorn + ["--http", "fastwrap.uvicorn:HttpToolsProtocol"]
        elif name == "granian":
            granian = which("granian")
            if granian is None:
                raise RuntimeError("granian is not installed")
            argv = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", port,
                    "--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
                    "asgi:app"]
        elif name == "nginx":
            nginx = which("nginx")
            if nginx is None:
                raise RuntimeError("nginx is not installed")
            prefix = os.path.join(tmp, "nginx")
            os.makedirs(prefix, exist_ok=True)
            conf = os.path.join(prefix, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(prefix=prefix, port=port, root=root))
            argv = [nginx, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log")]
        else:
            raise ValueError(name)
        self.log = open(os.path.join(tmp, f"{name}.log"), "wb")
        self.process = subprocess.Popen(argv, cwd=HERE, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # leave nothing running behind a server that failed to start
            raise

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url("/4KiB"), timeout=2) as response:
                    response.read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer") from None
                time.sleep(0.1)

    def check(self, digests: Dict[str, str]) -> None:
        """Refuse to measure a server that does not send the right bytes."""
        for name, digest in digests.items():
            with urllib.request.urlopen(self.url("/" + name), timeout=60) as response:
                got = hashlib.sha256(response.read()).hexdigest()
            if got != digest:
                raise RuntimeError(f"{self.name} sent wrong bytes for {name}")

    def stats(self) -> Optional[Dict[str, Any]]:
        if not self.name.startswith("uvicorn"):
            return None
        with urllib.request.urlopen(self.url("/__stats__"), timeout=10) as response:
            result: Dict[str, Any] = json.loads(response.read())
            return result

    def cpu(self) -> float:
        return tree_cpu_seconds(self.process.pid)

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


def measure(client: str, server: Server, size: str, seconds: float) -> Dict[str, float]:
    """One load (a file size, or a RANGE_LOADS row over the 64 MiB file) for *seconds*."""
    cpu_before = server.cpu()
    path, extra = ("/64MiB", RANGE_LOADS[size]) if size in RANGE_LOADS else ("/" + size, [])
    argv = [client, "-p", str(server.port), "-u", path, "-c", str(CONNECTIONS[size]),
            "-d", str(seconds), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 300)
    cpu = server.cpu() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"client failed on {server.name}: {done.stderr.strip()}")
    result = json.loads(done.stdout)
    gb = result["body_bytes"] / 1e9
    return {"rps": result["responses"] / result["seconds"],
            "mb_s": result["body_bytes"] / result["seconds"] / 1e6,
            "cpu_s_per_gb": cpu / gb if gb else float("nan")}


# -- the run ------------------------------------------------------------------------------------

RATIOS = [  # (name, server, baseline, file, metric)
    ("1MiB req/s fastwrap / stock", "uvicorn+fastwrap", "uvicorn", "1MiB", "rps"),
    ("1MiB CPU-s/GB fastwrap / stock", "uvicorn+fastwrap", "uvicorn", "1MiB", "cpu_s_per_gb"),
    ("64MiB MB/s fastwrap / nginx", "uvicorn+fastwrap", "nginx", "64MiB", "mb_s"),
    ("4KiB req/s fastwrap / stock", "uvicorn+fastwrap", "uvicorn", "4KiB", "rps"),
    ("1MiB req/s fastwrap / granian", "uvicorn+fastwrap", "granian", "1MiB", "rps"),
    ("64MiB MB/s granian / nginx", "granian", "nginx", "64MiB", "mb_s"),
    ("16x4MiB ranges CPU-s/GB fastwrap / stock", "uvicorn+fastwrap", "uvicorn", "16x4MiB",
     "cpu_s_per_gb"),
    ("16x4MiB ranges MB/s fastwrap / stock", "uvicorn+fastwrap", "uvicorn", "16x4MiB", "mb_s"),
    ("16x4MiB multipart CPU-s/GB fastwrap / stock", "uvicorn+fastwrap", "uvicorn",
     "16x4MiB-multipart", "cpu_s_per_gb"),
]


def ratios(run: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, float]:
    """The targets (and a few comparisons), within one round, for what was measured."""
    out = {}
    for name, server, baseline, size, metric in RATIOS:
        if size in run.get(server, {}) and size in run.get(baseline, {}):
            out[name] = run[server][size][metric] / run[baseline][size][metric]
    return out


TARGETS: Dict[str, Callable[[float], bool]] = {
    "1MiB req/s fastwrap / stock": lambda r: r >= 3.0,
    "1MiB CPU-s/GB fastwrap / stock": lambda r: r <= 0.5,
    "64MiB MB/s fastwrap / nginx": lambda r: r >= 0.8,
    "4KiB req/s fastwrap / stock": lambda r: r >= 0.95,
    "16x4MiB ranges CPU-s/GB fastwrap / stock": lambda r: r <= 0.5,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--sizes", default=",".join([*SIZES, *RANGE_LOADS]),
                        help="the files (and range loads) to measure "
                             "(the ratios need all of them)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fastwrap-asgi-bench-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's worker drops root and must read the files
        root = os.path.join(tmp, "files")
        os.makedirs(root)
        digests = make_files(root)
        client = build_client(tmp)
        servers: Dict[str, Server] = {}
        skipped: Dict[str, str] = {}
        try:
            for name in args.servers.split(","):
                try:
                    server = Server(name, root, tmp)
                except RuntimeError as exc:
                    skipped[name] = str(exc)
                    print(f"skipped {name}: {exc}", file=sys.stderr)
                    continue
                servers[name] = server  # stopped in the finally below, whatever happens
                try:
                    server.check(digests)
                except RuntimeError as exc:
                    server.stop()
                    del servers[name]
                    skipped[name] = str(exc)
                    print(f"skipped {name}: {exc}", file=sys.stderr)
            sizes = args.sizes.split(",")
            for server in servers.values():  # warm up: first requests, lazy imports
                for size in sizes:
                    measure(client, server, size, 0.5)
            ours = servers.get("uvicorn+fastwrap")
            fastwrap_before = ours.stats() if ours else None
            rounds: List[Dict[str, Dict[str, Dict[str, float]]]] = []
            for number in range(args.rounds):
                run: Dict[str, Dict[str, Dict[str, float]]] = {}
                # The order rotates every round, so no server always runs right
                # after the same neighbour (page cache, CPU frequency, other load).
                names = list(servers)
                names = names[number % len(names):] + names[:number % len(names)]
                for size in sizes:
                    for name in names:
                        server = servers[name]
                        run.setdefault(name, {})[size] = measure(client, server, size,
                                                                 args.seconds)
                rounds.append(run)
                print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
            fastwrap_after = ours.stats() if ours else None
        finally:
            for server in servers.values():
                server.stop()

    report = summarise(rounds, servers, skipped, fastwrap_before, fastwrap_after, args)
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def summarise(rounds: List[Dict[str, Any]], servers: Dict[str, Server],
              skipped: Dict[str, str], before: Any, after: Any,
              args: argparse.Namespace) -> Dict[str, Any]:
    table: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    for name in servers:
        for size in rounds[0][name]:
            table.setdefault(name, {})[size] = {
                metric: median_spread([r[name][size][metric] for r in rounds])
                for metric in ("rps", "mb_s", "cpu_s_per_gb")}
    per_round = [ratios(r) for r in rounds]
    summary = {key: median_spread([r[key] for r in per_round]) for key in per_round[0]}
    paths = {}
    if before and after:
        paths = {p: after["stats"][p]["bytes"] - before["stats"][p]["bytes"]
                 for p in after["stats"]}
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "processor": platform.machine(),
                    "load_average": os.getloadavg()},
        "rounds": args.rounds, "seconds": args.seconds, "connections": CONNECTIONS,
        "skipped": skipped, "table": table, "ratios": summary,
        "targets": {k: TARGETS[k](v["median"]) for k, v in summary.items() if k in TARGETS},
        "fastwrap_bytes_by_path": paths,
    }


def render(report: Dict[str, Any]) -> str:
    lines = [f"{report['date']}, {report['machine']}, {report['rounds']} rounds x "
             f"{report['seconds']} s, connections {report['connections']}", ""]
    header = f"{'server':18} {'file':6} {'req/s':>22} {'MB/s':>22} {'CPU-s/GB':>20}"
    lines += [header, "-" * len(header)]
    for name, sizes in report["table"].items():
        for size, m in sizes.items():
            def cell(d: Dict[str, float], fmt: str) -> str:
                return (f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})")
            lines.append(f"{name:18} {size:6} {cell(m['rps'], '.0f'):>22} "
                         f"{cell(m['mb_s'], '.0f'):>22} {cell(m['cpu_s_per_gb'], '.2f'):>20}")
    lines += ["", "same-round ratios (median, min-max):"]
    for key, v in report["ratios"].items():
        verdict = report["targets"].get(key)
        mark = "" if verdict is None else ("  target met" if verdict else "  target MISSED")
        lines.append(f"  {key}: {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f}){mark}")
    lines.append(f"fastwrap body bytes by path in the uvicorn+fastwrap server: "
                 f"{report['fastwrap_bytes_by_path']}")
    if report["skipped"]:
        lines.append(f"skipped: {report['skipped']}")
    return "\n".join(lines)


# -- the app every Python server runs --------------------------------------------------------

def _make_app() -> Any:
    import fastwrap
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def stats(request: Any) -> Any:
        return JSONResponse({"stats": fastwrap.stats()})

    return Starlette(routes=[
        Route("/__stats__", stats),
        Mount("/", StaticFiles(directory=os.environ["FASTWRAP_BENCH_ROOT"])),
    ])


if __name__ == "__main__":
    main()
elif "FASTWRAP_BENCH_ROOT" in os.environ:
    app = _make_app()
