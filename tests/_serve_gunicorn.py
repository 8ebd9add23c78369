"""A real gunicorn process on 127.0.0.1 for end-to-end tests.

``with serve_gunicorn("apps_gunicorn:app", worker="gthread") as url:`` starts
``python -m gunicorn`` with fastwrap's worker class, waits until it answers,
and at exit stops it and its workers, leaving nothing running.  A gunicorn
that exits before it answers raises :class:`GunicornExited`, with its output.

The listening socket is bound here (port 0, so no race for a free port) and
handed to gunicorn as ``--bind fd://N``.  The readiness probe is
``GET /__stats__``, which apps wrapped with ``_servers.with_stats`` answer
without touching fastwrap's counters.
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import fastwrap

TESTS = Path(__file__).resolve().parent
# Where the fastwrap under test comes from (src/ in a checkout).
SRC = Path(fastwrap.__file__).resolve().parents[1]

WORKERS = {
    "sync": "fastwrap.gunicorn.SyncWorker",
    "gthread": "fastwrap.gunicorn.ThreadWorker",
}

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@functools.lru_cache(maxsize=None)
def certificate_authority():
    """The trustme CA behind every TLS server started here (trust it in clients)."""
    import trustme  # in the project's test extra
    return trustme.CA()


def client_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate_authority().configure_trust(context)
    return context


class GunicornExited(RuntimeError):
    """gunicorn exited before it answered; *output* is all it printed."""

    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(f"gunicorn exited with {returncode}:\n{output[-4000:]}")
        self.returncode = returncode
        self.output = output


@contextlib.contextmanager
def serve_gunicorn(app_ref: str, worker: Optional[str] = "sync", tls: bool = False,
                   extra_args: Sequence[str] = (), *,
                   env: Optional[Dict[str, str]] = None,
                   config: Optional[str] = None) -> Iterator[str]:
    """Run gunicorn serving *app_ref* ("module:attribute" from tests/); yield its base URL.

    *worker* is ``"sync"`` or ``"gthread"`` (fastwrap's worker classes), a
    dotted worker class path given to ``-k`` as is, or None: no ``-k``, the
    config file or ``GUNICORN_CMD_ARGS`` names it.  *config* is the text of a
    ``gunicorn.conf.py`` given to ``--config``.  *env* adds to the server's
    environment (e.g. ``{"FASTWRAP_NO_EXTENSIONS": "1"}``).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    scheme = "https" if tls else "http"
    with tempfile.TemporaryDirectory(prefix="fastwrap-gunicorn-") as scratch:
        args = [sys.executable, "-m", "gunicorn",
                "--bind", f"fd://{listener.fileno()}",
                "--workers", "1",
                "--chdir", str(TESTS),
                "--graceful-timeout", "5",
                "--timeout", "60"]
        if worker is not None:
            args += ["--worker-class", WORKERS.get(worker, worker)]
        if config is not None:
            config_path = os.path.join(scratch, "gunicorn.conf.py")
            Path(config_path).write_text(config)
            args += ["--config", config_path]
        if worker == "gthread":
            args += ["--threads", "4"]
        if tls:
            cert = certificate_authority().issue_cert("127.0.0.1", "localhost")
            certfile = os.path.join(scratch, "cert.pem")
            keyfile = os.path.join(scratch, "key.pem")
            cert.cert_chain_pems[0].write_to_path(certfile)
            for pem in cert.cert_chain_pems[1:]:
                pem.write_to_path(certfile, append=True)
            cert.private_key_pem.write_to_path(keyfile)
            args += ["--certfile", certfile, "--keyfile", keyfile]
        args += [*extra_args, app_ref]
        # FASTWRAP_NO_EXTENSIONS is inherited (a pure-Python run stays one);
        # FASTWRAP_DISABLE is not, so the server's paths are what the test says.
        environ = {k: v for k, v in os.environ.items() if k != "FASTWRAP_DISABLE"}
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS), str(SRC), os.environ.get("PYTHONPATH")) if p)
        environ.update(env or {})
        output_path = os.path.join(scratch, "output.log")
        with open(output_path, "wb") as output:
            process = subprocess.Popen(
                args, cwd=TESTS, env=environ, stdout=output, stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),), start_new_session=True)
        listener.close()  # gunicorn holds it now
        try:
            _wait_until_answering(process, port, tls, output_path)
            yield f"{scheme}://127.0.0.1:{port}"
        finally:
            _stop(process)


def _wait_until_answering(process: subprocess.Popen, port: int, tls: bool,
                          output_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise GunicornExited(process.returncode,
                                 Path(output_path).read_text(errors="replace"))
        try:
            if tls:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    "127.0.0.1", port, timeout=5, context=client_tls_context())
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/__stats__")
                conn.getresponse().read()
                return
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer within "
                                   f"{START_TIMEOUT} s:\n"
                                   + Path(output_path).read_text(errors="replace")[-4000:])
            time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    """Stop the arbiter, then kill whatever of its process group is left.

    The arbiter is left a zombie (not reaped) until the end, so its pid, which
    is the group's id, cannot be reused by an unrelated process meanwhile.
    """
    if process.returncode is not None:
        return  # reaped already: its group id may belong to someone else now
    group = process.pid  # start_new_session: the arbiter leads its own group
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)  # graceful: workers finish first
    if not _exited(process.pid, STOP_TIMEOUT):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        _exited(process.pid, STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)  # a worker outliving its arbiter
    process.wait(STOP_TIMEOUT)


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to *timeout* s for *pid* to exit, without reaping it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True  # already reaped
        time.sleep(0.05)
    return False
