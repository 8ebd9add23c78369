"""Per-transmission overhead in instructions, counted by callgrind: repeatable on a busy machine.

Wall-clock costs of a 4 KiB send swing by 2x on a shared 2-core machine;
the user-space instructions each way executes do not.  For each way of
sending a 4 KiB file on a socketpair, this runs a small loop under
``valgrind --tool=callgrind`` at two iteration counts and takes the
difference, which cancels interpreter start-up; then subtracts a bare
``os.sendfile`` loop's count, leaving what each way adds around the
kernel's work (the kernel's own instructions are not counted at all).

    python benchmarks/overhead.py [--small 1000] [--large 3000]

Needs valgrind, and the compiled engine built (``python setup.py build_ext
--inplace`` in a checkout).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

#: The loop each count comes from; WAY picks what one iteration sends.
LOOP = r"""
import os, socket, sys
from fastwrap import _fastwrap, _purepy
way, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
a, b = socket.socketpair()
a.settimeout(30)  # as a server's connection is
f = open(path, "rb")
out, src = a.fileno(), f.fileno()
ways = {
    "bare os.sendfile": lambda: os.sendfile(out, src, 0, 4096),
    "socket.sendfile": lambda: a.sendfile(f),
    "fastwrap cython": lambda: _fastwrap.FileWrapper(f).transmit(a),
    "fastwrap python": lambda: _purepy.FileWrapper(f).transmit(a),
}
send = ways[way]
for _ in range(n):
    f.seek(0)
    send()
    b.recv(65536)
"""

WAYS = ("bare os.sendfile", "socket.sendfile", "fastwrap cython", "fastwrap python")


def instructions(way: str, n: int, path: str) -> int:
    """User-space instructions of the whole interpreter running the loop *n* times."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", LOOP, way, str(n), path],
        capture_output=True, text=True, check=True)
    match = re.search(r"refs:\s+([\d,]+)", proc.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "4k.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
        per = {}
        for way in WAYS:
            counts = [instructions(way, n, path) for n in (args.small, args.large)]
            per[way] = (counts[1] - counts[0]) / (args.large - args.small)
    bare = per["bare os.sendfile"]
    overhead = {way: per[way] - bare for way in WAYS}
    print(f"{'way':<18} {'instructions':>12} {'overhead':>10}")
    for way in WAYS:
        print(f"{way:<18} {per[way]:>12,.0f} {overhead[way]:>10,.0f}")
    cython = overhead["fastwrap cython"]
    print(f"\ncython overhead / socket.sendfile's: {cython / overhead['socket.sendfile']:.2f}")
    print(f"cython overhead / pure Python's:     {cython / overhead['fastwrap python']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
