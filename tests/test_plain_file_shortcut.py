"""The compiled engine decides the commonest case (a plain file to a plain socket)
in C, without building a plan; with debug logging on it always asks the plan.
Every shape that might take the shortcut must give exactly what the plan
gives: the same path, bytes, count, final position and stats.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import wsgiref.util

import pytest

import fastwrap
from fastwrap import _paths

from _support import make_link, random_bytes

DATA = random_bytes(300_000, seed=7)


def _shapes(path):
    """(name, make source, count) for files of every type and position."""
    def buffered(pos=0, read_first=0):
        def make():
            f = open(path, "rb")
            f.read(read_first)  # fills the buffer: tell() is behind the descriptor
            if pos:
                f.seek(pos)
            return f, f
        return make

    def raw(pos=0):
        def make():
            f = open(path, "rb", buffering=0)
            f.seek(pos)
            return f, f
        return make

    def wrapped(engine, inner):
        def make():
            f, keeper = inner()
            return engine.FileWrapper(f), keeper
        return make

    def stdlib_wrapped(inner):
        def make():
            f, keeper = inner()
            return wsgiref.util.FileWrapper(f), keeper
        return make

    def writable():
        def make():
            f = open(path, "r+b")
            f.seek(10)
            f.write(b"unflushed")  # must be flushed before the kernel reads the file
            return f, f
        return make

    return {
        "buffered": (buffered(), None),
        "buffered-at-1000": (buffered(pos=1000), None),
        "buffered-after-read": (buffered(read_first=5), 1234),
        "buffered-past-eof": (buffered(pos=len(DATA) + 10), None),
        "raw-at-77": (raw(77), 50_000),
        "raw-count-0": (raw(), 0),
        "raw-count-past-size": (raw(), 10 * len(DATA)),
        "writable": (writable(), None),
        "stdlib-wrapper": (stdlib_wrapped(buffered(pos=9)), 100_001),
    }, wrapped


SHAPES = ["buffered", "buffered-at-1000", "buffered-after-read", "buffered-past-eof",
          "raw-at-77", "raw-count-0", "raw-count-past-size", "writable", "stdlib-wrapper",
          "fastwrap-wrapper"]


def _send(engine, path, shape, link_kind, debug):
    with open(path, "wb") as f:  # afresh: the writable shape changes it
        f.write(DATA)
    shapes, wrapped = _shapes(path)
    if shape == "fastwrap-wrapper":
        make, count = wrapped(engine, shapes["buffered-at-1000"][0]), 4321
    else:
        make, count = shapes[shape]
    logger = logging.getLogger("fastwrap")
    level = logger.level
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    link = make_link(link_kind)
    source, keeper = make()
    try:
        fastwrap.reset_stats()
        tx = engine.Transmission(source, link.dest, count, b"HEAD")
        path_taken = tx.path
        reader = link.reader()
        sent = tx.run()
        link.finish()
        received = reader.result()
        position = keeper.tell()
        counted = {p: s["bytes"] for p, s in fastwrap.stats().items() if s["transmissions"]}
        with open(path, "rb") as f:
            on_disk = f.read()
    finally:
        logger.setLevel(level)
        keeper.close()
        link.close()
    return {"path": path_taken, "sent": sent, "received": received, "position": position,
            "stats": counted, "file": on_disk}


@pytest.mark.parametrize("link_kind", ["tcp", "socketpair"])
@pytest.mark.parametrize("shape", SHAPES)
def test_plain_file_shortcut_agrees_with_the_plan(engine, tmp_path, shape, link_kind):
    path = tmp_path / "data.bin"
    planned = _send(engine, path, shape, link_kind, debug=True)
    shortcut = _send(engine, path, shape, link_kind, debug=False)
    assert shortcut == planned
    # And both are right, not merely equal.
    assert planned["received"].startswith(b"HEAD")
    body = planned["received"][4:]
    assert len(body) == planned["sent"]
    assert planned["file"][planned["position"] - planned["sent"]:planned["position"]] == body


def test_plain_file_shortcut_respects_a_disabled_sendfile(engine, tmp_path):
    if "sendfile" not in engine.SUPPORTED_PATHS:
        pytest.skip("no sendfile in this engine on this platform")
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    a, b = socket.socketpair()
    try:
        with open(path, "rb") as f:
            assert engine.Transmission(f, a, 10).path == "sendfile"
            _paths.disable("sendfile")
            try:
                assert engine.Transmission(f, a, 10).path != "sendfile"
            finally:
                _paths.enable("sendfile")
    finally:
        a.close()
        b.close()


def test_plain_file_shortcut_refuses_what_the_plan_refuses(engine, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    a, b = socket.socketpair()
    try:
        with open(path, "rb") as f:
            with pytest.raises(ValueError):
                engine.Transmission(f, a, -1)
            with pytest.raises(TypeError):
                engine.Transmission(f, a, 1.5)
            with pytest.raises(TypeError):
                engine.Transmission(f, a, True)
            a.setblocking(False)
            with pytest.raises(ValueError, match="non-blocking"):
                engine.Transmission(f, a).run()
        closed = open(path, "rb")
        closed.close()
        with pytest.raises(ValueError):
            engine.Transmission(closed, b)
        wrapper = engine.FileWrapper(open(path, "rb"))
        wrapper.close()
        with pytest.raises(ValueError):
            engine.Transmission(wrapper, b)
        with open(path, "ab", buffering=0) as w:  # a FileIO, but not for reading
            with pytest.raises(io.UnsupportedOperation):
                engine.Transmission(w, b)
    finally:
        a.close()
        b.close()
