"""A real cheroot process on 127.0.0.1 for end-to-end tests (and the benchmark).

``with serve_cheroot("apps_cheroot:app", kind="fastwrap") as server:`` starts
this file as a script in a process of its own, waits until it answers, and at
exit stops it by its pid.  *kind*:

- ``"fastwrap"``: ``fastwrap.cheroot.Server``, the drop-in;
- ``"installed"``: ``fastwrap.cheroot.install()``, then a stock
  ``cheroot.wsgi.Server``;
- ``"cherrypy"``: ``fastwrap.cheroot.install()``, then CherryPy's own
  server with the application grafted on its tree;
- ``"stock"``: cheroot as it is; its applications get the stdlib's
  ``wsgiref.util.FileWrapper`` as ``wsgi.file_wrapper`` (cheroot offers none),
  which cheroot iterates.

The server binds port 0 and writes the port it got to a file, so there is no
race for a free port.  Its ``fastwrap.cheroot`` debug log goes to a file.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

TESTS = Path(__file__).resolve().parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class CherootServer:
    """A running cheroot process: where it listens, its pid, its log."""

    def __init__(self, process: subprocess.Popen, port: int, tls: bool, log: Path,
                 context: Optional[ssl.SSLContext]) -> None:
        self.process = process
        self.pid = process.pid
        self.host = "127.0.0.1"
        self.port = port
        self.tls = tls
        self.log = log
        self.context = context

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def descriptors(self) -> int:
        """How many descriptors the server process has open now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@contextlib.contextmanager
def serve_cheroot(app_ref: str, kind: str = "fastwrap", *, tls: bool = False,
                  env: Optional[Dict[str, str]] = None, threads: int = 4,
                  timeout: float = 10) -> Iterator[CherootServer]:
    """Run cheroot serving *app_ref* ("module:attribute" from tests/); yield the server.

    *env* adds to the server's environment (``{"FASTWRAP_NO_EXTENSIONS": "1"}``
    for the pure-Python engine); *timeout* is cheroot's, for each connection.
    """
    import fastwrap  # where the fastwrap under test comes from (src/ in a checkout)
    src = Path(fastwrap.__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="fastwrap-cheroot-") as scratch:
        port_file = Path(scratch, "port")
        log = Path(scratch, "server.log")
        args = [sys.executable, str(Path(__file__)), "--app", app_ref, "--kind", kind,
                "--port-file", str(port_file), "--threads", str(threads),
                "--timeout", str(timeout)]
        context = None
        if tls:
            from _serve_gunicorn import certificate_authority, client_tls_context
            cert = certificate_authority().issue_cert("127.0.0.1", "localhost")
            certfile, keyfile = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
            cert.cert_chain_pems[0].write_to_path(str(certfile))
            for pem in cert.cert_chain_pems[1:]:
                pem.write_to_path(str(certfile), append=True)
            cert.private_key_pem.write_to_path(str(keyfile))
            args += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
            context = client_tls_context()
        environ = {k: v for k, v in os.environ.items() if k != "FASTWRAP_DISABLE"}
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS), str(src), os.environ.get("PYTHONPATH")) if p)
        environ.update(env or {})
        with open(log, "wb") as output:
            process = subprocess.Popen(args, cwd=TESTS, env=environ, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            port = _wait_for_port(process, port_file, log)
            server = CherootServer(process, port, tls, log, context)
            _wait_until_answering(server)
            yield server
        finally:
            _stop(process)


def _wait_for_port(process: subprocess.Popen, port_file: Path, log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"cheroot exited with {process.returncode}:\n"
                               + log.read_text(errors="replace")[-4000:])
        text = port_file.read_text() if port_file.exists() else ""
        if text.endswith("\n"):
            return int(text)
        if time.monotonic() > deadline:
            raise RuntimeError("cheroot did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.05)


def _wait_until_answering(server: CherootServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        conn = server.connection(timeout=5)
        try:
            conn.request("GET", "/__stats__")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            conn.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


# -- the server process ------------------------------------------------------------------

def _stock_file_wrapper(app: Any) -> Any:
    import wsgiref.util

    def application(environ: Dict[str, Any], start_response: Any) -> Any:
        environ.setdefault("wsgi.file_wrapper", wsgiref.util.FileWrapper)
        return app(environ, start_response)

    return application


def _serve_cherrypy(app: Any, options: argparse.Namespace) -> None:
    import fastwrap.cheroot
    fastwrap.cheroot.install()  # before CherryPy builds its server, at engine start

    import cherrypy
    cherrypy.config.update({
        "server.socket_host": "127.0.0.1", "server.socket_port": 0,
        "server.thread_pool": options.threads, "server.socket_timeout": options.timeout,
        "engine.autoreload.on": False, "checker.on": False, "log.screen": False,
    })
    cherrypy.tree.graft(app, "")
    cherrypy.engine.start()
    _write_port(options.port_file, cherrypy.server.bound_addr[1])
    cherrypy.engine.block()


def _write_port(path: str, port: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--kind", choices=("fastwrap", "installed", "cherrypy", "stock"),
                        required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    options = parser.parse_args()

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    fastwrap_log = logging.getLogger("fastwrap")
    fastwrap_log.addHandler(handler)
    fastwrap_log.setLevel(logging.DEBUG)

    import importlib

    import cheroot.wsgi
    module, _, attribute = options.app.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    address = ("127.0.0.1", 0)
    if options.kind == "cherrypy":
        _serve_cherrypy(app, options)
        return
    if options.kind == "fastwrap":
        import fastwrap.cheroot
        server: Any = fastwrap.cheroot.Server(address, app, numthreads=options.threads,
                                              timeout=options.timeout)
    else:
        if options.kind == "installed":
            import fastwrap.cheroot
            fastwrap.cheroot.install()
        else:
            app = _stock_file_wrapper(app)
        server = cheroot.wsgi.Server(address, app, numthreads=options.threads,
                                     timeout=options.timeout)
    if options.certfile:
        from cheroot.ssl.builtin import BuiltinSSLAdapter
        server.ssl_adapter = BuiltinSSLAdapter(options.certfile, options.keyfile)
    server.prepare()
    _write_port(options.port_file, server.bind_addr[1])
    server.serve()


if __name__ == "__main__":
    main()
