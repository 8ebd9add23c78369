"""Property tests: whatever the source, position, count, blksize, headers and dest,
what arrives is ``headers + data[start:start + n]``.

With ``n = min(count, len(data) - start)`` (0 when start is past the end),
the call returns ``n`` and the source is left at ``start + n`` wherever a
source has a position.  Both engines; hypothesis draws the cases.
"""
from __future__ import annotations

import contextlib
import io
import mmap
import os
import random
import socket
import threading
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the project's test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _support import HANG, ReadOnly, Reader, drive, make_link  # noqa: E402

MAX_SIZE = 300 * 1024
EXAMPLES = int(os.environ.get("FASTWRAP_PROPERTY_EXAMPLES", "200"))

SOURCE_KINDS = ("file", "buffered-partly-read", "bytesio", "bytes", "bytearray",
                "memoryview", "mmap", "pipe", "read-only")
DEST_KINDS = ("socketpair", "tcp", "tcp-timeout", "non-blocking")
CALLS = ("wrapper.transmit", "transmit_file", "fastwrap.transmit", "Transmission")


@st.composite
def cases(draw):
    # Sizes cluster at the edges (0, one byte, buffer and page sizes) and spread to 300 KiB.
    size = draw(st.one_of(
        st.sampled_from([0, 1, 4095, 4096, 4097, 8192, 65536, 65537, 262144, MAX_SIZE]),
        st.integers(0, 2048),
        st.integers(0, MAX_SIZE)))
    start = draw(st.one_of(
        st.just(0),
        st.integers(0, size),
        st.integers(size, size + 5000),  # at or past the end
    ))
    count = draw(st.one_of(
        st.none(),
        st.just(0),
        st.integers(0, max(size - start, 0)),         # within
        st.integers(max(size - start, 0), MAX_SIZE * 2),  # beyond
    ))
    return {
        "size": size,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "start": start,
        "count": count,
        "blksize": draw(st.one_of(st.sampled_from([1, 7, 4096, 8192, 65536]),
                                  st.integers(1, 1 << 20))),
        "headers": draw(st.one_of(st.just(b""), st.binary(max_size=300),
                                  st.binary(min_size=1, max_size=70000))),
        "source": draw(st.sampled_from(SOURCE_KINDS)),
        "dest": draw(st.sampled_from(DEST_KINDS)),
        "call": draw(st.sampled_from(CALLS)),
        "wrapped": draw(st.booleans()),
    }


class Case:
    """One drawn case, made real: the source, its expected bytes, its position."""

    def __init__(self, engine, directory: Path, case: dict) -> None:
        self.engine = engine
        self.case = case
        self.stack = contextlib.ExitStack()
        self.data = random.Random(case["seed"]).randbytes(case["size"])
        self.position = None  # a callable giving the source's position, where it has one
        kind = case["source"]
        start = case["start"]
        size = case["size"]
        data = self.data
        if kind == "mmap" and size == 0:
            kind = "bytes"  # an empty file cannot be mapped
        if kind == "mmap":
            start = min(start, size)  # mmap.seek() refuses positions past the end
        self.kind = kind
        wrapped = case["wrapped"] or case["call"] == "wrapper.transmit" or (
            case["call"] == "fastwrap.transmit")
        if kind in ("file", "buffered-partly-read", "mmap"):
            path = directory / f"source-{os.getpid()}-{threading.get_ident()}.bin"
            path.write_bytes(data)
            self.stack.callback(path.unlink)
            f = open(path, "rb", buffering=random.Random(case["seed"]).choice([-1, 1024, 8192]))
            self.stack.callback(f.close)
            if kind == "file":
                f.seek(start)
                obj = f
                self.position = f.tell
            elif kind == "buffered-partly-read":
                f.read(start)  # through the buffer: tell() is ahead of the fd's offset
                start = min(start, size)
                obj = f
                self.position = f.tell
            else:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self.stack.callback(m.close)
                m.seek(start)
                obj = m
                self.position = m.tell
        elif kind == "bytesio":
            obj = io.BytesIO(data)
            obj.seek(start)
            self.position = obj.tell
        elif kind in ("bytes", "bytearray", "memoryview"):
            obj = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)
            if not wrapped:
                start = 0  # a bare buffer always starts at 0
        elif kind == "pipe":
            obj = self._pipe(data)
            obj.read(start)  # partly read through the buffered reader
            start = min(start, size)
        elif kind == "read-only":
            obj = ReadOnly(data)
            obj.read(start)
            start = min(start, size)
            self.position = obj._io.tell
        else:  # pragma: no cover
            raise AssertionError(kind)
        self.raw = obj
        self.source = obj
        if wrapped:
            self.source = engine.FileWrapper(obj, case["blksize"])
            if kind in ("bytes", "bytearray", "memoryview"):
                self.source.seek(start)
                self.position = self.source.tell
        self.start = start
        available = max(size - start, 0)
        count = case["count"]
        self.n = available if count is None else min(count, available)
        self.expected = case["headers"] + data[start:start + self.n]

    def _pipe(self, data: bytes):
        r, w = os.pipe()
        reader = open(r, "rb")
        self.stack.callback(reader.close)

        def feed() -> None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(w, view):]
            except OSError:
                pass
            finally:
                os.close(w)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        self.stack.callback(thread.join, HANG)
        self.stack.callback(reader.close)  # first: a writer still blocked wakes with EPIPE
        return reader

    def close(self) -> None:
        self.stack.close()


def run_case(engine, directory: Path, case: dict) -> None:
    made = Case(engine, directory, case)
    link = make_link("socketpair" if case["dest"] == "socketpair" else "tcp")
    try:
        if case["dest"] == "tcp-timeout":
            link.dest.settimeout(HANG)
        elif case["dest"] == "non-blocking":
            link.dest.setblocking(False)
        reader = Reader(link.peer)
        reader.start()
        try:
            result = send(engine, made, link.dest, case)
        finally:
            link.finish()
        arrived = reader.result()
        described = (f"{made.kind} (wrapped={made.source is not made.raw}) start={made.start} "
                     f"n={made.n} -> {case['dest']} via {case['call']}")
        assert len(arrived) == len(made.expected), described
        assert arrived == made.expected, described
        assert result == made.n, described
        if made.position is not None:
            assert made.position() == made.start + made.n, described
    finally:
        link.close()
        made.close()


def send(engine, made: Case, dest: socket.socket, case: dict) -> int:
    count, headers = case["count"], case["headers"]
    call = case["call"]
    if case["dest"] == "non-blocking" or call == "Transmission":
        tx = engine.Transmission(made.source, dest, count, headers)
        with tx:
            if case["dest"] == "non-blocking":
                moved = drive(tx, dest)
            else:
                moved = 0
                while not tx.done:
                    try:
                        moved += tx.send()
                    except BlockingIOError:
                        if tx.done:
                            break
            assert tx.done
        assert moved == len(headers) + tx.sent
        return tx.sent
    if call == "wrapper.transmit":
        return made.source.transmit(dest, count, headers=headers)
    if call == "fastwrap.transmit":
        return engine.transmit(dest, made.source, count, headers)
    return engine.transmit_file(made.source, dest, count, headers)


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("properties")
    yield path
    for child in path.iterdir():
        child.unlink()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_what_arrives_is_headers_plus_the_reference_slice(engine, directory, case):
    run_case(engine, directory, case)


@pytest.mark.parametrize("source", SOURCE_KINDS)
@pytest.mark.parametrize("dest", DEST_KINDS)
def test_every_source_and_dest_kind_once(engine, directory, source, dest):
    """The corners hypothesis might not draw: every pair, with a count inside the data."""
    run_case(engine, directory, {
        "size": 100_000, "seed": 7, "start": 1234, "count": 50_000, "blksize": 4096,
        "headers": b"HTTP/1.1 200 OK\r\n\r\n", "source": source, "dest": dest,
        "call": "transmit_file", "wrapped": True})
