"""A 256 MiB file from the page cache: stock waitress against fastwrap.waitress.

Run from a checkout (src/ on PYTHONPATH, the extension built in place):

    pip install waitress
    PYTHONPATH=src python benchmarks/waitress.py [--rounds 5] [--requests 4] [--json out.json]

Both servers run the same plain WSGI app (``environ['wsgi.file_wrapper']``
around the open file, with its Content-Length, defined at the bottom of this
file) with waitress's default adjustments (4 threads), one process each, at
the same time.  The client is splice_client.c from this directory:
keep-alive connections, bodies moved socket -> pipe -> /dev/null with
splice(2), so it is not the bottleneck; each measurement is ``--requests``
GETs of the whole file on each of 1, then 4 connections at once (a single
download, then a server with several).  Rounds are interleaved (stock,
fastwrap, then fastwrap, stock, ...) so slow drifts of a shared machine hit
both alike;
figures are medians over the rounds with their min-max, and the ratios are
computed within each round, then summarised the same way.  Server CPU is
the user+system time of the server process during the measurement, per GB
of body delivered.  Before measuring, one response of each server is
checked byte for byte (by digest), and afterwards fastwrap's server reports
that its bytes left by sendfile.
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
# Run as a script, this file's directory comes first on sys.path, where this
# very file would be imported as "waitress": the server must come from site-packages.
if sys.path and os.path.abspath(sys.path[0] or ".") == HERE:
    del sys.path[0]
SRC = os.path.join(os.path.dirname(HERE), "src")
SIZE = 256 << 20
SERVERS = ["waitress", "waitress+fastwrap"]
TARGETS: Dict[str, Callable[[float], bool]] = {
    "GB/s fastwrap / stock": lambda r: r >= 1.5,
    "CPU-s/GB fastwrap / stock": lambda r: r <= 0.5,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User+system CPU of process *pid* (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def build_client(tmp: str) -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler found for splice_client.c")
    out = os.path.join(tmp, "splice_client")
    subprocess.run([cc, "-O2", "-pthread", "-o", out, os.path.join(HERE, "splice_client.c")],
                   check=True)
    return out


def make_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(SIZE // (4 << 20)):
            chunk = os.urandom(4 << 20)
            digest.update(chunk)
            f.write(chunk)
    with open(path, "rb") as f:  # into the page cache: the benchmark is of warm files
        while f.read(8 << 20):
            pass
    return digest.hexdigest()


class Server:
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", name, path, str(self.port)],
            stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.05)

    def get(self, target: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{target}", timeout=120) as r:
            return bytes(r.read())

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def measure(client: str, server: Server, requests: int, connections: int) -> Dict[str, float]:
    cpu_before = server.cpu()
    argv = [client, "-p", str(server.port), "-u", "/file", "-c", str(connections), "-n",
            str(requests)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    cpu = server.cpu() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"client failed on {server.name}: {done.stderr.strip()}")
    result = json.loads(done.stdout)
    gb = result["body_bytes"] / 1e9
    return {"GBps": gb / result["seconds"], "cpu_s_per_gb": cpu / gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4,
                        help="GETs of the 256 MiB file per connection per measurement")
    parser.add_argument("--connections", default="1,4",
                        help="how many keep-alive connections download at once: each "
                             "of these is measured in every round")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    loads = [int(c) for c in args.connections.split(",")]

    with tempfile.TemporaryDirectory(prefix="fastwrap-waitress-bench-") as tmp:
        path = os.path.join(tmp, "big.bin")
        digest = make_file(path)
        client = build_client(tmp)
        servers = {name: Server(name, path) for name in SERVERS}
        try:
            for server in servers.values():
                if hashlib.sha256(server.get("/file")).hexdigest() != digest:
                    raise SystemExit(f"{server.name} sent the wrong bytes")
            rounds: List[Dict[str, Dict[str, Dict[str, float]]]] = []
            for i in range(args.rounds):
                order = SERVERS if i % 2 == 0 else SERVERS[::-1]
                run: Dict[str, Dict[str, Dict[str, float]]] = {}
                for conns in loads:
                    load = run[str(conns)] = {}
                    for name in order:
                        load[name] = measure(client, servers[name], args.requests, conns)
                    print(f"round {i + 1}, {conns} connection(s): " + ", ".join(
                        f"{n} {r['GBps']:.2f} GB/s {r['cpu_s_per_gb']:.2f} CPU-s/GB"
                        for n, r in load.items()), flush=True)
                rounds.append(run)
            stats = json.loads(servers["waitress+fastwrap"].get("/stats"))
        finally:
            for server in servers.values():
                server.stop()

    report = summarise(rounds, loads, stats, args)
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")


def summarise(rounds: List[Dict[str, Dict[str, Dict[str, float]]]], loads: List[int],
              stats: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    from importlib.metadata import version

    import fastwrap

    summary: Dict[str, Any] = {}
    for conns in map(str, loads):
        runs = [r[conns] for r in rounds]
        ratios = {
            "GB/s fastwrap / stock": [r["waitress+fastwrap"]["GBps"] / r["waitress"]["GBps"]
                                      for r in runs],
            "CPU-s/GB fastwrap / stock": [r["waitress+fastwrap"]["cpu_s_per_gb"]
                                          / r["waitress"]["cpu_s_per_gb"] for r in runs],
        }
        summary[conns] = {
            "servers": {name: {metric: median_spread([r[name][metric] for r in runs])
                               for metric in ("GBps", "cpu_s_per_gb")} for name in SERVERS},
            "ratios": {name: dict(median_spread(values),
                                  met=TARGETS[name](statistics.median(values)))
                       for name, values in ratios.items()},
        }
    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "waitress": version("waitress"),
        "implementation": fastwrap.IMPLEMENTATION,
        "file_mib": SIZE >> 20,
        "requests_per_connection": args.requests,
        "rounds": rounds,
        "summary": summary,
        "fastwrap_server_stats": stats["stats"],
    }


def render(report: Dict[str, Any]) -> str:
    lines = [f"{report['file_mib']} MiB from the page cache, {len(report['rounds'])} rounds, "
             "medians (min-max)"]
    for conns, part in report["summary"].items():
        lines += ["", f"{conns} connection(s):"]
        for name, metrics in part["servers"].items():
            g, c = metrics["GBps"], metrics["cpu_s_per_gb"]
            lines.append(f"  {name:18}  {g['median']:.2f} GB/s ({g['min']:.2f}-{g['max']:.2f})"
                         f"  {c['median']:.2f} CPU-s/GB ({c['min']:.2f}-{c['max']:.2f})")
        for name, r in part["ratios"].items():
            lines.append(f"  {name:28} {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})  "
                         f"target {'met' if r['met'] else 'missed'}")
    sendfile = report["fastwrap_server_stats"]["sendfile"]
    lines += ["", f"fastwrap server: {sendfile['transmissions']} transmissions, "
                  f"{sendfile['bytes']} bytes by sendfile"]
    return "\n".join(lines)


# -- the servers (run as children) -----------------------------------------------------------

def child(kind: str, path: str, port: int) -> None:
    import fastwrap

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"] == "/stats":
            body = json.dumps({"implementation": fastwrap.IMPLEMENTATION,
                               "stats": fastwrap.stats()}).encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        f = open(path, "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(os.fstat(f.fileno()).st_size))])
        return environ["wsgi.file_wrapper"](f)

    if kind == "waitress+fastwrap":
        import fastwrap.waitress
        server = fastwrap.waitress.create_server(app, listen=f"127.0.0.1:{port}")
    else:
        import waitress
        server = waitress.create_server(app, listen=f"127.0.0.1:{port}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
