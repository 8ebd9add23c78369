"""The files the bench sends, and the throwaway certificate of its TLS rows."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Optional

from .model import MIB

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    ssl = None  # type: ignore[assignment]


# -- the files and the certificate -----------------------------------------------------

def write_file(path: str, size: int) -> None:
    """*size* bytes of incompressible data, flushed to disk so no writeback runs later."""
    block = os.urandom(min(size, MIB))
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(block[:left])
        f.flush()
        os.fsync(f.fileno())


def warm(path: str) -> None:
    """Read the file once, so that every contender finds it in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(MIB):
            pass


def make_certificate(workdir: str) -> tuple[Optional[Any], Optional[str]]:
    """A server TLS context with a throwaway self-signed certificate, or why not."""
    if ssl is None:
        return None, "this Python has no ssl module"
    openssl = shutil.which("openssl")
    if openssl is None:
        return None, "no openssl command to make a throwaway certificate"
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    try:
        done = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-days", "1", "-keyout", key, "-out", cert],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"openssl failed: {exc}"
    if done.returncode != 0:
        return None, f"openssl failed: {done.stderr.decode('utf-8', 'replace').strip()[-200:]}"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, None
