"""The same files through nginx, common WSGI servers and fastwrap's integrations, in one run.

Run from a checkout (fastwrap importable, its extension built):

    python benchmarks/servers.py [--rounds 5] [--servers nginx,fastwrap-serve,...]
                                 [--size 1G] [--json FILE] [--plot FILE.png]

Every server is started here on 127.0.0.1 with a free port and stopped at the
end, Ctrl-C included.  A small C client (splice_client.c, compiled now with
the system cc) sends keep-alive HTTP/1.1 GETs and moves bodies to /dev/null
with splice(2), so it costs little CPU next to any server.  Workloads: one
big file (page cache) on one connection, then 1 MiB and 4 KiB files on a few
connections for a fixed time.  Rounds are interleaved (every server once per
round, in a rotated order); figures are medians with min-max, and ratios are
taken within a round.  Server CPU is the utime+stime of the server's process
tree from /proc.  See benchmarks/README.rst for what each figure means.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_SRC = os.path.join(os.path.dirname(HERE), "src")
if importlib.util.find_spec("fastwrap") is None and os.path.isdir(
        os.path.join(CHECKOUT_SRC, "fastwrap")):
    sys.path.insert(0, CHECKOUT_SRC)  # run from a checkout without installing it
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SMALL, MEDIUM = 4 << 10, 1 << 20
FILES = {"small": SMALL, "medium": MEDIUM}  # "big" is sized by --size


# ---------------------------------------------------------------- utilities

def parse_size(text: str) -> int:
    """'1G', '256M', '4096' -> bytes (binary units)."""
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) << (10 * power)


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def free_port() -> int:
    """A port nothing listens on now; the server binds it a moment later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def which(name: str) -> Optional[str]:
    """Find a program beside this interpreter (a venv's bin) first, then on PATH and sbin."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which(name, path=path)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def median_range(values: List[float]) -> Optional[dict]:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ------------------------------------------------------------ /proc figures

def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()  # fields from "state" on


def process_tree(root: int) -> List[int]:
    """root and all its live descendants (workers, Apache children, mod_wsgi daemons)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of the server's whole process tree: what serving cost it."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ client

def build_client(tmp: str) -> str:
    """Compile splice_client.c with the system C compiler into tmp."""
    cc = os.environ.get("CC") or which("cc") or which("gcc") or which("clang")
    if cc is None:
        raise SystemExit("no C compiler (cc) found: install build-essential")
    out = os.path.join(tmp, "splice_client")
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-pthread", "-o", out,
                    os.path.join(HERE, "splice_client.c")], check=True)
    return out


class ClientError(RuntimeError):
    pass


def run_client(client: str, port: int, path: str, connections: int = 1,
               requests: Optional[int] = None, seconds: Optional[float] = None) -> dict:
    """Run splice_client once; its JSON line, or ClientError with its message."""
    argv = [client, "-p", str(port), "-u", path, "-c", str(connections)]
    argv += ["-n", str(requests)] if requests else ["-d", str(seconds)]
    limit = (seconds or 0) + 300
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise ClientError(f"client did not finish within {limit:.0f} s") from None
    if proc.returncode != 0:
        raise ClientError(proc.stderr.strip() or f"client exited {proc.returncode}")
    return json.loads(proc.stdout)


# ------------------------------------------------------------------- files

def write_random(path: str, size: int) -> str:
    """Write size random bytes; return their SHA-256 (hex)."""
    digest = hashlib.sha256()
    chunk = os.urandom(min(size, 1 << 20))
    with open(path, "wb") as f:
        left = size
        while left:
            piece = chunk[:left]
            # vary the chunk so a server repeating one block cannot pass the check
            piece = left.to_bytes(8, "little") + piece[8:] if len(piece) >= 8 else piece
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def warm_page_cache(path: str) -> None:
    """Read the file once so every server serves it from memory."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass


def make_files(root: str, big_size: int) -> Dict[str, dict]:
    sizes = dict(FILES, big=big_size)
    files = {}
    for name, size in sizes.items():
        path = os.path.join(root, name)
        files[name] = {"path": path, "size": size, "sha256": write_random(path, size)}
    warm_page_cache(files["big"]["path"])
    return files


# ----------------------------------------------------------------- servers

@dataclass
class Context:
    """What a server's command line needs: paths of this run."""
    tmp: str
    root: str
    threads: int
    env: Dict[str, str]


@dataclass
class ServerSpec:
    """A server to benchmark: how to find it, start it, and how many workers it gets."""
    key: str
    label: str
    workers: str
    missing: Callable[[], Optional[str]]  # why it cannot run here, or None
    command: Callable[[int, Context], List[str]]
    fastwrap: bool = False
    ready_timeout: float = 30.0


def _need_modules(*names: str) -> Callable[[], Optional[str]]:
    def missing() -> Optional[str]:
        absent = [n for n in names if not has_module(n)]
        return f"Python module(s) not installed: {', '.join(absent)}" if absent else None
    return missing


def _need_program(name: str, hint: str) -> Callable[[], Optional[str]]:
    def missing() -> Optional[str]:
        return None if which(name) else f"{name} not found ({hint})"
    return missing


def _launcher(kind: str) -> Callable[[int, Context], List[str]]:
    def command(port: int, ctx: Context) -> List[str]:
        return [sys.executable, os.path.join(HERE, "apps.py"), kind, str(port), str(ctx.threads)]
    return command


def _nginx(port: int, ctx: Context) -> List[str]:
    prefix = os.path.join(ctx.tmp, "nginx")
    os.makedirs(prefix, exist_ok=True)
    with open(os.path.join(HERE, "nginx.conf.in")) as f:
        conf = string.Template(f.read()).substitute(prefix=prefix, port=port, root=ctx.root)
    conf_path = os.path.join(prefix, "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    return [which("nginx"), "-p", prefix, "-c", conf_path, "-e", os.path.join(prefix, "error.log")]


def _gunicorn(worker_class: str) -> Callable[[int, Context], List[str]]:
    def command(port: int, ctx: Context) -> List[str]:
        return [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", worker_class,
                "--bind", f"127.0.0.1:{port}", "--chdir", HERE, "apps:app"]
    return command


def _uwsgi(port: int, ctx: Context) -> List[str]:
    argv = [which("uwsgi"), "--http11-socket", f"127.0.0.1:{port}",
            "--wsgi-file", os.path.join(HERE, "apps.py"), "--callable", "app",
            "--master", "--processes", "1", "--threads", str(ctx.threads),
            "--disable-logging", "--die-on-term",
            # without it a 4 KiB body waits for the client's delayed ACK (40 ms)
            "--tcp-nodelay"]
    if sys.prefix != sys.base_prefix:  # uWSGI embeds the base Python: point it at the venv
        argv += ["--home", sys.prefix]
    return argv


def _mod_wsgi(port: int, ctx: Context) -> List[str]:
    server_root = os.path.join(ctx.tmp, "mod_wsgi")
    argv = [which("mod_wsgi-express"), "start-server", os.path.join(HERE, "apps.py"),
            "--host", "127.0.0.1", "--port", str(port), "--server-root", server_root,
            "--processes", "1", "--threads", str(ctx.threads), "--enable-sendfile",
            "--setenv", "FASTWRAP_BENCH_ROOT", ctx.root]
    for entry in ctx.env.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            argv += ["--python-path", entry]
    if os.geteuid() == 0:  # Apache will not run the application as root
        argv += ["--user", "www-data", "--group", "www-data"]
    return argv


def _mod_wsgi_missing() -> Optional[str]:
    """mod_wsgi-express, and (as root) an interpreter the www-data user can read."""
    if not which("mod_wsgi-express"):
        return "mod_wsgi-express not found (pip install mod_wsgi; needs apache2 and apache2-dev)"
    if os.geteuid() == 0:
        path = os.path.realpath(sys.base_prefix)
        while path != "/":
            if not os.stat(path).st_mode & 0o001:
                return (f"Apache runs the application as www-data, which cannot enter {path} "
                        f"(no o+x) to load Python from {sys.base_prefix}")
            path = os.path.dirname(path)
    return None


def _fastwrap_serve(port: int, ctx: Context) -> List[str]:
    if fastwrap_serve_exists(ctx.env):
        return [sys.executable, "-m", "fastwrap", "serve", ctx.root, "--bind", "127.0.0.1",
                "--port", str(port), "--threads", str(ctx.threads), "--quiet"]
    return _launcher("fastwrap-wsgiref")(port, ctx)


def _fastwrap_serve_on(loop: str) -> Callable[[int, Context], List[str]]:
    def command(port: int, ctx: Context) -> List[str]:
        return _fastwrap_serve(port, ctx) + ["--loop", loop]
    return command


def fastwrap_serve_exists(env: Dict[str, str]) -> bool:
    probe = subprocess.run([sys.executable, "-m", "fastwrap", "serve", "--help"],
                           capture_output=True, env=env)
    return probe.returncode == 0


def server_specs(threads: int) -> List[ServerSpec]:
    t = f"{threads} threads"
    return [
        ServerSpec("nginx", "nginx (sendfile on)", "1 worker process (event loop)",
                   _need_program("nginx", "apt-get install nginx"), _nginx),
        ServerSpec("gunicorn", "gunicorn sync", "1 sync worker (one connection at a time)",
                   _need_modules("gunicorn"), _gunicorn("sync")),
        ServerSpec("uwsgi", "uWSGI", f"1 process x {t} (+ master)",
                   _need_program("uwsgi", "pip install uwsgi"), _uwsgi),
        ServerSpec("waitress", "waitress", f"1 process, {t}",
                   _need_modules("waitress"), _launcher("waitress")),
        ServerSpec("mod_wsgi", "mod_wsgi-express", f"Apache + 1 daemon process x {t}",
                   _mod_wsgi_missing, _mod_wsgi, ready_timeout=60.0),
        ServerSpec("wsgiref", "wsgiref (stock)", "1 thread, HTTP/1.0",
                   lambda: None, _launcher("wsgiref")),
        ServerSpec("fastwrap-serve", "fastwrap serve", f"1 process, {t}",
                   lambda: None, _fastwrap_serve, fastwrap=True),
        ServerSpec("fastwrap-serve-asyncio", "fastwrap serve --loop asyncio",
                   "1 process, the stdlib's event loop", lambda: None,
                   _fastwrap_serve_on("asyncio"), fastwrap=True),
        ServerSpec("fastwrap-serve-threaded", "fastwrap serve before its event loop",
                   f"1 process, {t}: StaticFiles on fastwrap.wsgiref.make_server",
                   lambda: None, _launcher("static-threaded"), fastwrap=True),
        ServerSpec("fastwrap-gunicorn", "gunicorn + fastwrap SyncWorker",
                   "1 sync worker (one connection at a time)",
                   _need_modules("gunicorn"), _gunicorn("fastwrap.gunicorn.SyncWorker"),
                   fastwrap=True),
        ServerSpec("fastwrap-gevent", "fastwrap.gevent.WSGIServer", "1 process, greenlets",
                   _need_modules("gevent"), _launcher("gevent"), fastwrap=True),
        ServerSpec("fastwrap-wsgiref", "wsgiref + fastwrap.wsgiref.install()",
                   "1 thread, HTTP/1.0", lambda: None, _launcher("wsgiref-install"),
                   fastwrap=True),
    ]


class Server:
    """A started server process (in its own session) and its log."""

    def __init__(self, spec: ServerSpec, ctx: Context) -> None:
        self.spec = spec
        self.port = free_port()
        self.argv = spec.command(self.port, ctx)
        self.log_path = os.path.join(ctx.tmp, f"{spec.key}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=ctx.env, cwd=ctx.tmp,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 5) -> str:
        with open(self.log_path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])

    def wait_ready(self) -> None:
        """Until GET /small answers 200; RuntimeError if the server exits or never answers."""
        deadline = time.monotonic() + self.spec.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if fetch(self.port, "/small")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not answering after {self.spec.ready_timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL anything of the tree still alive."""
        tree = process_tree(self.pid) if self.proc.poll() is None else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in tree:  # a child that left the process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def fetch(port: int, path: str, sink: Optional[Callable[[bytes], None]] = None):
    """GET path; (status, body length), feeding the body to sink."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        length = 0
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            length += len(chunk)
            if sink is not None:
                sink(chunk)
        return resp.status, length
    finally:
        conn.close()


def verify(server: Server, files: Dict[str, dict]) -> None:
    """Fetch every file once and compare its SHA-256, so a broken server cannot look fast."""
    for name, info in files.items():
        digest = hashlib.sha256()
        status, length = fetch(server.port, "/" + name, digest.update)
        if status != 200 or length != info["size"] or digest.hexdigest() != info["sha256"]:
            raise RuntimeError(f"/{name}: status {status}, {length} bytes, SHA-256 "
                               f"{'matches' if digest.hexdigest() == info['sha256'] else 'differs'}")


# ---------------------------------------------------------------- workloads

@dataclass
class Workload:
    key: str
    path: str
    connections: int
    requests: Optional[int] = None
    seconds: Optional[float] = None


def workloads(args: argparse.Namespace) -> List[Workload]:
    return [
        Workload("big", "/big", 1, requests=args.big_requests),
        Workload("medium", "/medium", args.connections, seconds=args.duration),
        Workload("small", "/small", args.connections, seconds=args.duration),
    ]


def measure(server: Server, client: str, work: Workload) -> dict:
    """One workload against one server: client figures plus the server tree's CPU."""
    cpu0, client0 = tree_cpu_seconds(server.pid), children_cpu_seconds()
    result = run_client(client, server.port, work.path, work.connections,
                        work.requests, work.seconds)
    cpu = tree_cpu_seconds(server.pid) - cpu0
    gb = result["body_bytes"] / 1e9
    result.update(
        server_cpu_s=cpu, client_cpu_s=children_cpu_seconds() - client0,
        gbytes_per_s=gb / result["seconds"], req_per_s=result["responses"] / result["seconds"],
        cpu_s_per_gb=cpu / gb if gb else None)
    return result


def run_round(servers: List[Server], client: str, args: argparse.Namespace,
              index: int) -> Dict[str, dict]:
    """Every server once, in an order rotated by the round number."""
    shift = index % len(servers)
    order = servers[shift:] + servers[:shift]
    results: Dict[str, dict] = {}
    for server in order:
        entry = results[server.spec.key] = {}
        for work in workloads(args):
            try:
                entry[work.key] = measure(server, client, work)
            except ClientError as exc:
                entry[work.key] = {"error": str(exc)}
            time.sleep(0.2)
        print(f"  round {index + 1}: {server.spec.key:<18} " + "  ".join(
            _brief(work.key, entry[work.key]) for work in workloads(args)), file=sys.stderr)
    return results


def _brief(key: str, r: dict) -> str:
    if "error" in r:
        return f"{key}: ERROR {r['error'][:60]}"
    if key == "big":
        return f"{key}: {r['gbytes_per_s']:.2f} GB/s {r['cpu_s_per_gb']:.3f} CPU-s/GB"
    return f"{key}: {r['req_per_s']:.0f} req/s"


# ----------------------------------------------------- fastwrap-only probes

def rss_probe(ctx: Context, client: str, size: int) -> dict:
    """Serve a sparse file of `size` through `fastwrap serve`; how much RSS does it add?"""
    root = os.path.join(ctx.tmp, "huge-root")
    os.makedirs(root, exist_ok=True)
    for name, n in FILES.items():
        write_random(os.path.join(root, name), n)
    with open(os.path.join(root, "huge"), "wb") as f:
        f.truncate(size)  # sparse: no disk used, reads as zeros
    spec = next(s for s in server_specs(ctx.threads) if s.key == "fastwrap-serve")
    server = Server(spec, Context(ctx.tmp, root, ctx.threads, ctx.env))
    try:
        server.wait_ready()
        # every pool thread started, every code path imported, before "before"
        run_client(client, server.port, "/medium", ctx.threads, requests=20)
        before = rss_bytes(server.pid)
        samples: List[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(rss_bytes(server.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = run_client(client, server.port, "/huge", 1, requests=1)
        finally:
            done.set()
            sampler.join()
        after = rss_bytes(server.pid)
    finally:
        server.stop()
    return {"file_bytes": size, "received_bytes": result["body_bytes"],
            "seconds": result["seconds"], "rss_before": before, "rss_max_during": max(samples),
            "rss_after": after, "added_max": max(samples + [after]) - before,
            "samples": len(samples)}


def _python_work(seconds: float) -> float:
    """Pure-Python CPU work for `seconds`; iterations per second (needs the GIL)."""
    n, x = 0, 1
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(2000):
            x = (x * 31 + 7) % 1000003
        n += 2000
    return n / (time.perf_counter() - start)


def _pin(cpus: Optional[set], pid: int = 0) -> None:
    """Pin the calling thread (pid 0) or process to cpus; None: every CPU again."""
    os.sched_setaffinity(pid, cpus if cpus is not None else set(range(os.cpu_count() or 1)))


def _pin_process_tree(root: int, cpus: Optional[set]) -> None:
    for pid in process_tree(root):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                _pin(cpus, int(tid))
            except OSError:
                pass  # a thread that ended meanwhile


def _serve_http_with_engine(listener: socket.socket, path: str, stop: threading.Event,
                            counters: dict, cpus: Optional[set]) -> None:
    """A minimal HTTP server in a thread: each GET answered by fastwrap.transmit()."""
    import fastwrap
    if cpus is not None:
        _pin(cpus)
    size = os.path.getsize(path)
    head = (f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        with conn:
            while conn.recv(65536):  # one request per recv: the client never pipelines
                with open(path, "rb") as f:
                    counters["bytes"] += fastwrap.transmit(conn, fastwrap.FileWrapper(f),
                                                          headers=head)


def gil_probe(client: str, path: str, seconds: float, control_pid: Optional[int],
              control_port: Optional[int], pinned: bool) -> dict:
    """Pure-Python speed while fastwrap's engine sends the big file in another thread.

    Solo speed is measured before and after.  The control runs the same client
    against `fastwrap serve` in another process (no shared GIL): on a small
    machine the transfer also takes CPU time from the Python thread, and the
    control shows how much of the slowdown is that.  When pinned, the Python
    thread has CPU 0 to itself and the transfer (sender, client, the control
    server) runs on CPU 1, which leaves the GIL as the only thing shared.
    """
    import fastwrap
    work_cpus, transfer_cpus = ({0}, {1}) if pinned else (None, None)
    _pin(work_cpus)
    try:
        solo_before = _python_work(seconds)
        during, sent = _work_during_engine_transfer(client, path, seconds, transfer_cpus,
                                                    work_cpus)
        control = None
        if control_port is not None:
            if pinned:
                _pin_process_tree(control_pid, transfer_cpus)
            try:
                with _client_running(client, control_port, seconds + 1, transfer_cpus,
                                     work_cpus):
                    time.sleep(0.3)
                    control = _python_work(seconds)
            finally:
                if pinned:
                    _pin_process_tree(control_pid, None)
        solo_after = _python_work(seconds)
    finally:
        _pin(None)
    solo = statistics.mean([solo_before, solo_after])
    return {"engine": fastwrap.IMPLEMENTATION, "pinned": pinned,
            "solo_iter_per_s": [solo_before, solo_after],
            "during_iter_per_s": during, "ratio": during / solo,
            "control_other_process_iter_per_s": control,
            "control_ratio": control / solo if control else None,
            "bytes_sent_by_engine": sent}


def _work_during_engine_transfer(client: str, path: str, seconds: float,
                                 transfer_cpus: Optional[set],
                                 work_cpus: Optional[set]) -> tuple:
    listener = socket.create_server(("127.0.0.1", 0))
    stop, counters = threading.Event(), {"bytes": 0}
    sender = threading.Thread(target=_serve_http_with_engine,
                              args=(listener, path, stop, counters, transfer_cpus))
    sender.start()
    try:
        with _client_running(client, listener.getsockname()[1], seconds + 1, transfer_cpus,
                             work_cpus):
            time.sleep(0.3)
            during = _python_work(seconds)
    finally:
        stop.set()
        sender.join()
        listener.close()
    return during, counters["bytes"]


class _client_running:
    """`with`: splice_client pulls /big repeatedly in the background for `seconds`."""

    def __init__(self, client: str, port: int, seconds: float, cpus: Optional[set],
                 restore: Optional[set]) -> None:
        self.argv = [client, "-p", str(port), "-u", "/big", "-c", "1", "-d", str(seconds)]
        self.cpus, self.restore = cpus, restore

    def __enter__(self) -> "_client_running":
        if self.cpus is not None:
            _pin(self.cpus)  # the child inherits this thread's CPUs
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
        finally:
            if self.cpus is not None:
                _pin(self.restore)
        return self

    def __exit__(self, *exc: object) -> None:
        out, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0 and exc[0] is None:
            raise ClientError(err.strip())


# ----------------------------------------------------------------- summary

def collect(rounds: List[dict], key: str, workload: str, metric: str) -> List[float]:
    values = []
    for r in rounds:
        value = r.get(key, {}).get(workload, {}).get(metric)
        if value is not None:
            values.append(value)
    return values


def ratios(rounds: List[dict], key: str, base: str, workload: str, metric: str,
           invert: bool = False) -> List[float]:
    """Per-round ratio key/base (base/key when invert): both measured in the same round."""
    out = []
    for r in rounds:
        a = r.get(key, {}).get(workload, {}).get(metric)
        b = r.get(base, {}).get(workload, {}).get(metric)
        if a and b:
            out.append(b / a if invert else a / b)
    return out


def summarize(rounds: List[dict], keys: List[str]) -> Dict[str, dict]:
    table = {}
    for key in keys:
        table[key] = {
            "big_gbytes_per_s": median_range(collect(rounds, key, "big", "gbytes_per_s")),
            "big_cpu_s_per_gb": median_range(collect(rounds, key, "big", "cpu_s_per_gb")),
            "small_req_per_s": median_range(collect(rounds, key, "small", "req_per_s")),
            "medium_req_per_s": median_range(collect(rounds, key, "medium", "req_per_s")),
            "small_cpu_s_per_gb": median_range(collect(rounds, key, "small", "cpu_s_per_gb")),
            "big_vs_nginx": median_range(ratios(rounds, key, "nginx", "big", "gbytes_per_s")),
            "small_vs_wsgiref": median_range(ratios(rounds, key, "wsgiref", "small", "req_per_s")),
            "errors": sum(1 for r in rounds for w in r.get(key, {}).values() if "error" in w),
        }
    return table


def _fmt(entry: Optional[dict], spec: str = ".2f") -> str:
    if entry is None:
        return "-"
    return f"{entry['median']:{spec}} [{entry['min']:{spec}}-{entry['max']:{spec}}]"


def print_table(specs: List[ServerSpec], table: Dict[str, dict], big_size: int) -> None:
    columns = [("server", 34), ("workers", 40), (f"{human_size(big_size)} GB/s", 20),
               ("CPU-s/GB", 20), ("4 KiB req/s", 20), ("1 MiB req/s", 18),
               ("x nginx", 17), ("x wsgiref 4K", 18)]
    print("  ".join(f"{name:<{width}}" for name, width in columns))
    for spec in specs:
        row = table[spec.key]
        cells = [spec.label, spec.workers, _fmt(row["big_gbytes_per_s"]),
                 _fmt(row["big_cpu_s_per_gb"], ".3f"), _fmt(row["small_req_per_s"], ".0f"),
                 _fmt(row["medium_req_per_s"], ".0f"), _fmt(row["big_vs_nginx"]),
                 _fmt(row["small_vs_wsgiref"])]
        print("  ".join(f"{cell:<{width}}" for cell, (_, width) in zip(cells, columns)))


def targets(rounds: List[dict], probes: dict, big_size: int) -> List[dict]:
    """The maintainers' targets as figures: value, goal, reached or not."""
    out = []

    def add(name: str, values: List[float], goal: float, higher: bool, unit: str = "x") -> None:
        if not values:
            out.append({"target": name, "value": None, "goal": goal, "reached": None,
                        "higher_is_better": higher})
            return
        value = statistics.median(values)
        out.append({"target": name, "value": value, "min": min(values), "max": max(values),
                    "goal": goal, "unit": unit, "higher_is_better": higher,
                    "reached": value >= goal if higher else value <= goal})

    add(f"fastwrap serve {human_size(big_size)} throughput / nginx (same round)",
        ratios(rounds, "fastwrap-serve", "nginx", "big", "gbytes_per_s"), 0.95, True)
    add("fastwrap serve CPU-s/GB / nginx CPU-s/GB (same round)",
        ratios(rounds, "fastwrap-serve", "nginx", "big", "cpu_s_per_gb"), 1.1, False)
    add("fastwrap serve 4 KiB req/s / stock wsgiref",
        ratios(rounds, "fastwrap-serve", "wsgiref", "small", "req_per_s"), 2.0, True)
    add("fastwrap serve 4 KiB req/s / gunicorn sync",
        ratios(rounds, "fastwrap-serve", "gunicorn", "small", "req_per_s"), 1.0, True)
    if probes.get("rss"):
        add(f"RSS added while serving a {human_size(probes['rss']['file_bytes'])} sparse file",
            [probes["rss"]["added_max"] / (1 << 20)], 1.0, False, "MiB")
    for key, how in (("gil", "unpinned"), ("gil_pinned", "pinned: Python thread on CPU 0, "
                                                          "transfer on CPU 1")):
        if probes.get(key):
            add(f"pure-Python thread speed during a transfer / solo ({how})",
                [probes[key]["ratio"]], 0.8, True)
    return out


def print_targets(results: List[dict]) -> None:
    print("\nTargets (figures, not asserts):")
    for t in results:
        if t["value"] is None:
            print(f"  {t['target']}: not measured")
            continue
        verdict = "reached" if t["reached"] else "MISSED"
        print(f"  {t['target']}: {t['value']:.3f} {t['unit']} "
              f"[{t['min']:.3f}-{t['max']:.3f}] (goal {'>=' if t['higher_is_better'] else '<='} "
              f"{t['goal']}) "
              f"-> {verdict}")


def plot(path: str, specs: List[ServerSpec], table: Dict[str, dict], big_size: int) -> str:
    """Bars per server, one panel per figure, min-max as error bars; '' or why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed"
    panels = [("big_gbytes_per_s", f"{human_size(big_size)} file, 1 connection: GB/s"),
              ("big_cpu_s_per_gb", f"server CPU-s per GB, {human_size(big_size)} file "
                                   "(lower is better)"),
              ("small_req_per_s", "4 KiB files, keep-alive: req/s"),
              ("medium_req_per_s", "1 MiB files, keep-alive: req/s")]
    shown = [s for s in specs if table[s.key]["big_gbytes_per_s"] is not None]
    labels = [s.label for s in shown]
    colors = ["tab:orange" if s.fastwrap else ("tab:green" if s.key == "nginx" else "tab:blue")
              for s in shown]
    fig, grid = plt.subplots(2, 2, figsize=(16, 0.5 * len(shown) * 2 + 3))
    for ax, (metric, title) in zip(grid.flat, panels):
        cells = [table[s.key][metric] or {"median": 0, "min": 0, "max": 0} for s in shown]
        med = [c["median"] for c in cells]
        err = [[c["median"] - c["min"] for c in cells], [c["max"] - c["median"] for c in cells]]
        ax.barh(range(len(shown)), med, xerr=err, color=colors, capsize=3)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels(labels, fontsize=9)
        ax.invert_yaxis()
        top = max(c["max"] for c in cells) or 1
        ax.set_xlim(0, top * 1.18)
        for i, c in enumerate(cells):
            text = f"{c['median']:,.2f}" if c["median"] < 100 else f"{c['median']:,.0f}"
            ax.text(c["max"] + top * 0.01, i, text, va="center", fontsize=8)
    fig.suptitle("Same files, same client, 127.0.0.1: median of the rounds, error bars "
                 "min-max (orange: fastwrap, green: nginx)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


# ------------------------------------------------------------------ machine

def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "?")
    except OSError:
        pass
    return {"kernel": platform.release(), "cpu": model, "cores": os.cpu_count(),
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(
                timespec="seconds"), "versions": versions()}


def versions() -> Dict[str, str]:
    from importlib import metadata
    out = {}
    for dist in ("fastwrap", "gunicorn", "uwsgi", "waitress", "mod_wsgi", "gevent"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import fastwrap
        out["fastwrap"] = f"{fastwrap.__version__} ({fastwrap.IMPLEMENTATION} engine)"
    except ImportError:
        pass
    for program, flag in (("nginx", "-v"), ("apache2", "-v")):
        path = which(program)
        if path:
            proc = subprocess.run([path, flag], capture_output=True, text=True)
            text = (proc.stdout + proc.stderr).strip().splitlines()
            out[program] = text[0] if text else "?"
    return out


# --------------------------------------------------------------------- main

def child_env() -> Dict[str, str]:
    """Servers import the same fastwrap as this script, and apps.py from here."""
    env = dict(os.environ)
    paths = [HERE]
    spec = importlib.util.find_spec("fastwrap")
    if spec is not None and spec.origin:
        paths.append(os.path.dirname(os.path.dirname(spec.origin)))
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    keys = [s.key for s in server_specs(4)]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--servers", default=",".join(keys),
                   help=f"comma-separated subset of: {', '.join(keys)}")
    p.add_argument("--size", type=parse_size, default=parse_size("1G"),
                   help="size of the big file (default 1G)")
    p.add_argument("--big-requests", type=int, default=2,
                   help="GETs of the big file per measurement, on one connection (default 2)")
    p.add_argument("--duration", type=float, default=4.0,
                   help="seconds of each 1 MiB and 4 KiB measurement (default 4)")
    p.add_argument("--connections", type=int, default=4,
                   help="concurrent keep-alive connections for 1 MiB and 4 KiB (default 4)")
    p.add_argument("--threads", type=int, default=4,
                   help="threads of the threaded servers (default 4, one per connection)")
    p.add_argument("--huge-size", type=parse_size, default=parse_size("4G"),
                   help="sparse file for fastwrap's RSS figure (default 4G)")
    p.add_argument("--probe-seconds", type=float, default=3.0,
                   help="length of each pure-Python speed measurement (default 3)")
    p.add_argument("--no-probes", action="store_true", help="skip the RSS and GIL figures")
    p.add_argument("--middleware", choices=("none", "validate"), default="none",
                   help="put every server's application inside wsgiref.validate.validator")
    p.add_argument("--json", metavar="FILE", help="write every round's raw results here")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: print the table and draw the plot of a saved run")
    args = p.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(keys)
    if unknown:
        p.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_servers(specs: List[ServerSpec], ctx: Context, files: Dict[str, dict],
                  skipped: Dict[str, str], started: List[Server]) -> None:
    """Start, wait for, and verify each server; record why any could not run."""
    for spec in specs:
        reason = spec.missing()
        if reason:
            skipped[spec.key] = reason
            continue
        print(f"starting {spec.key} ...", file=sys.stderr)
        server = Server(spec, ctx)
        started.append(server)
        try:
            server.wait_ready()
            verify(server, files)
        except (RuntimeError, OSError, http.client.HTTPException) as exc:
            skipped[spec.key] = f"failed: {exc}"
            server.stop()
            started.remove(server)


def from_json(args: argparse.Namespace) -> int:
    """Table and plot again from a saved run (e.g. after changing the plot)."""
    with open(args.from_json) as f:
        saved = json.load(f)
    size = saved["config"]["size"]
    specs = [s for s in server_specs(saved["config"]["threads"]) if s.key in saved["summary"]]
    print_table(specs, saved["summary"], size)
    print_targets(saved["targets"])
    if args.plot:
        print(f"plot: {plot(args.plot, specs, saved['summary'], size) or args.plot}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return from_json(args)
    # Ctrl-C stops the servers even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    chosen = args.servers.split(",")
    specs = [s for s in server_specs(args.threads) if s.key in chosen]
    skipped: Dict[str, str] = {}
    started: List[Server] = []
    probes: dict = {}
    rounds: List[dict] = []
    load: List[float] = []
    with tempfile.TemporaryDirectory(prefix="fastwrap-bench-") as tmp:
        os.chmod(tmp, 0o755)  # Apache's daemon runs as www-data and must read the files
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        env = child_env()
        env["FASTWRAP_BENCH_ROOT"] = root
        if args.middleware != "none":
            env["FASTWRAP_BENCH_MIDDLEWARE"] = args.middleware
        ctx = Context(tmp, root, args.threads, env)
        try:
            client = build_client(tmp)
            print(f"writing {human_size(args.size)} of random data ...", file=sys.stderr)
            files = make_files(root, args.size)
            start_servers(specs, ctx, files, skipped, started)
            serve_via = ("python -m fastwrap serve" if fastwrap_serve_exists(env)
                         else "fastwrap.wsgiref.make_server (fastwrap serve not available)")
            for index in range(args.rounds):
                warm_page_cache(files["big"]["path"])
                load.append(os.getloadavg()[0])  # other work on the machine shows here
                rounds.append(run_round(started, client, args, index))
            if not args.no_probes and "fastwrap-serve" in chosen:
                probes = run_probes(ctx, client, files, started, args)
        finally:
            for server in started:
                server.stop()
    ran = [s for s in specs if s.key not in skipped]
    table = summarize(rounds, [s.key for s in ran])
    report(args, ran, specs, skipped, table, rounds, probes, serve_via, load)
    return 0


def run_probes(ctx: Context, client: str, files: Dict[str, dict], started: List[Server],
               args: argparse.Namespace) -> dict:
    """RSS and GIL figures for fastwrap, with the measured servers idle."""
    probes: dict = {}
    print("RSS probe ...", file=sys.stderr)
    probes["rss"] = rss_probe(ctx, client, args.huge_size)
    print("GIL probe ...", file=sys.stderr)
    control = next((s for s in started if s.spec.key == "fastwrap-serve"), None)
    pid, port = (control.pid, control.port) if control else (None, None)
    probes["gil"] = gil_probe(client, files["big"]["path"], args.probe_seconds, pid, port,
                              pinned=False)
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        print("GIL probe, pinned ...", file=sys.stderr)
        probes["gil_pinned"] = gil_probe(client, files["big"]["path"], args.probe_seconds,
                                         pid, port, pinned=True)
    return probes


def report(args: argparse.Namespace, ran: List[ServerSpec], specs: List[ServerSpec],
           skipped: Dict[str, str], table: Dict[str, dict], rounds: List[dict],
           probes: dict, serve_via: str, load: List[float]) -> None:
    info = machine()
    print(f"\n{info['date']}  Linux {info['kernel']}  {info['cpu']}  {info['cores']} cores  "
          f"Python {info['python']}")
    print(f"{args.rounds} rounds; big file {human_size(args.size)} x {args.big_requests} per "
          f"measurement on 1 connection; 4 KiB and 1 MiB: {args.connections} keep-alive "
          f"connections for {args.duration:g} s; medians [min-max]; ratios within a round.")
    if getattr(args, "middleware", "none") != "none":
        print(f"Every application inside middleware: {args.middleware}.")
    print(f"'fastwrap serve' ran as: {serve_via}.  No server writes an access log.  "
          f"1-min load average at each round's start: {', '.join(f'{x:.2f}' for x in load)}\n")
    print_table(ran, table, args.size)
    for key, reason in skipped.items():
        print(f"skipped {key}: {reason}")
    for key, row in table.items():
        if row["errors"]:
            print(f"{key}: {row['errors']} measurement(s) failed, see the JSON")
    if probes:
        rss = probes["rss"]
        print(f"\nRSS of 'fastwrap serve' sending a {human_size(rss['file_bytes'])} sparse file: "
              f"{rss['rss_before'] / 2**20:.2f} MiB before, max {rss['rss_max_during'] / 2**20:.2f}"
              f" MiB during ({rss['samples']} samples), {rss['rss_after'] / 2**20:.2f} MiB after: "
              f"+{rss['added_max'] / 2**10:.0f} KiB")
        for gil in (probes["gil"], probes.get("gil_pinned")):
            if gil is None:
                continue
            control = (f"; control, the same transfer by another process: "
                       f"{gil['control_ratio']:.2f}" if gil["control_ratio"] else "")
            print(f"pure-Python thread while fastwrap's {gil['engine']} engine sends in another "
                  f"thread{' (pinned apart)' if gil['pinned'] else ''}: {gil['ratio']:.2f} of "
                  f"its solo speed{control}")
    tgts = targets(rounds, probes, args.size)
    print_targets(tgts)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": vars(args), "fastwrap_serve_ran_as": serve_via,
                       "servers": {s.key: {"label": s.label, "workers": s.workers,
                                           "skipped": skipped.get(s.key)} for s in specs},
                       "rounds": rounds, "load_average_at_round_start": load,
                       "summary": table, "probes": probes,
                       "targets": tgts}, f, indent=1)
        print(f"\nraw results: {args.json}")
    if args.plot:
        why_not = plot(args.plot, ran, table, args.size)
        print(f"plot: {why_not or args.plot}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        sys.exit(130)
