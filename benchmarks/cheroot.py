"""Stock cheroot against ``fastwrap.cheroot.Server``: one big file from the page cache.

Run from a checkout (fastwrap importable, its extension built, cheroot installed):

    python benchmarks/cheroot.py [--rounds 5] [--size 256M] [--requests 8]
                                 [--json benchmarks/results/cheroot-DATE.json]

Both servers run benchmarks/apps.py's application, which answers ``GET /big``
with ``environ['wsgi.file_wrapper'](open(file))`` and a Content-Length.  Stock
cheroot offers no ``wsgi.file_wrapper``, so the application gets the
stdlib's ``wsgiref.util.FileWrapper``, which cheroot iterates (8 KiB reads,
each written to the socket); fastwrap's server sends the same file with its
compiled engine, and with its pure-Python one as a third server.  Each server
has 4 worker threads.

The client is servers.py's splice_client: keep-alive GETs on one connection,
bodies spliced to /dev/null.  Rounds are interleaved (every server once per
round, in a rotated order); figures are medians, and the ratios against
stock cheroot are taken within each round, then their median.  Server CPU is
the utime+stime of the server process from /proc.  A minute or two.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402  (benchmarks/servers.py: client, process figures, launch)
from servers import Context, Server, ServerSpec, Workload  # noqa: E402

STOCK = "cheroot"
SERVERS = [
    (STOCK, "cheroot (stock, iterating wsgiref's FileWrapper)"),
    ("cheroot-fastwrap", "fastwrap.cheroot.Server (cython engine)"),
    ("cheroot-fastwrap-python", "fastwrap.cheroot.Server (python engine)"),
]
#: What fastwrap's server must reach against stock cheroot, medians of per-round ratios.
TARGETS = {"cpu_s_per_gb": ("at most", 0.5), "gbytes_per_s": ("at least", 1.5)}


def _command(kind: str):
    # Not `python apps.py`: with this directory first on sys.path, `import
    # cheroot` would find this file instead of the server.
    def command(port: int, ctx: Context) -> List[str]:
        code = (f"import sys; sys.path.append({HERE!r}); import apps; "
                f"apps.main({[kind, str(port), str(ctx.threads)]!r})")
        return [sys.executable, "-c", code]
    return command


def _cheroot_missing() -> Optional[str]:
    from importlib import metadata
    try:
        metadata.version("cheroot")
    except metadata.PackageNotFoundError:
        return "cheroot is not installed: pip install 'fastwrap[cheroot]'"
    return None


def _specs() -> List[ServerSpec]:
    return [ServerSpec(key, label, "4 threads", _cheroot_missing, _command(key),
                       fastwrap=key != STOCK)
            for key, label in SERVERS]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=servers.parse_size, default=256 << 20,
                        help="the file's size (default 256M)")
    parser.add_argument("--requests", type=int, default=8,
                        help="GETs of the file per measurement (default 8)")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    specs = _specs()
    missing = specs[0].missing()
    if missing:
        raise SystemExit(f"cannot run: {missing}")
    work = Workload("big", "/big", 1, requests=args.requests)
    with tempfile.TemporaryDirectory(prefix="fastwrap-bench-cheroot-") as tmp:
        root = os.path.join(tmp, "files")
        os.mkdir(root)
        digest = servers.write_random(os.path.join(root, "big"), args.size)
        servers.write_random(os.path.join(root, "small"), 4096)
        servers.warm_page_cache(os.path.join(root, "big"))
        env = servers.child_env()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.abspath(p) != HERE)
        env["FASTWRAP_BENCH_ROOT"] = root
        ctx = Context(tmp=tmp, root=root, threads=4, env=env)
        client = servers.build_client(tmp)
        started: List[Server] = []
        try:
            for spec in specs:
                server = Server(spec, ctx)
                started.append(server)
                server.wait_ready()
                _verify(server, args.size, digest)
            rounds = []
            for number in range(args.rounds):
                shift = number % len(started)
                order = started[shift:] + started[:shift]
                results = {server.spec.key: servers.measure(server, client, work)
                           for server in order}
                rounds.append(results)
                print(f"round {number + 1}: " + ", ".join(
                    f"{key} {r['gbytes_per_s']:.2f} GB/s {r['cpu_s_per_gb']:.3f} CPU-s/GB"
                    for key, r in results.items()), flush=True)
        finally:
            for server in started:
                server.stop()
    summary = _summarize(rounds)
    _print(summary, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cheroot", "file_bytes": args.size,
                       "requests_per_measurement": args.requests, "threads": 4,
                       "machine": servers.machine(), "servers": dict(SERVERS),
                       "summary": summary, "rounds": rounds}, f, indent=2)
            f.write("\n")
    return 0 if all(t["met"] for t in summary["targets"]) else 1


def _verify(server: Server, size: int, digest: str) -> None:
    import hashlib
    hasher = hashlib.sha256()
    status, length = servers.fetch(server.port, "/big", hasher.update)
    if status != 200 or length != size or hasher.hexdigest() != digest:
        raise SystemExit(f"{server.spec.key} answered wrongly: {status}, {length} bytes")


def _summarize(rounds: List[Dict[str, dict]]) -> dict:
    keys = list(rounds[0])
    figures = {key: {metric: servers.median_range([r[key][metric] for r in rounds])
                     for metric in ("gbytes_per_s", "cpu_s_per_gb")}
               for key in keys}
    ratios = {}
    for key in keys:
        if key == STOCK:
            continue
        ratios[key] = {metric: statistics.median(r[key][metric] / r[STOCK][metric]
                                                 for r in rounds)
                       for metric in ("gbytes_per_s", "cpu_s_per_gb")}
    targets = []
    for metric, (sense, goal) in TARGETS.items():
        value = ratios["cheroot-fastwrap"][metric]
        met = value <= goal if sense == "at most" else value >= goal
        targets.append({"metric": metric, "server": "cheroot-fastwrap",
                        "ratio_to_stock": value, "goal": f"{sense} {goal}x", "met": met})
    return {"medians": figures, "ratios_to_stock": ratios, "targets": targets}


def _print(summary: dict, args: argparse.Namespace) -> None:
    print(f"\n{servers.human_size(args.size)} file from the page cache, "
          f"{args.requests} GETs per measurement, {args.rounds} rounds (medians)")
    print(f"{'server':<26} {'GB/s':>7} {'CPU-s/GB':>9} {'GB/s x':>7} {'CPU x':>7}")
    for key, figures in summary["medians"].items():
        ratio = summary["ratios_to_stock"].get(key)
        print(f"{key:<26} {figures['gbytes_per_s']['median']:>7.2f} "
              f"{figures['cpu_s_per_gb']['median']:>9.3f} "
              f"{'' if ratio is None else format(ratio['gbytes_per_s'], '.2f'):>7} "
              f"{'' if ratio is None else format(ratio['cpu_s_per_gb'], '.3f'):>7}")
    for target in summary["targets"]:
        print(f"target {target['metric']} {target['goal']} stock: "
              f"{target['ratio_to_stock']:.3f} -> {'met' if target['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
