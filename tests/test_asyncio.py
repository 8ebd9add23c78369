"""fastwrap.asyncio.sendfile: a custom asyncio server over real loopback TCP.

Each test runs on the default event loop and on uvloop (when installed), and
with either engine (the ``engine`` fixture points the helper at it).  The
clients are blocking sockets in threads; the server is the event loop in the
test's thread.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from typing import Any, Callable, Coroutine, List, Optional, Tuple

import pytest

import fastwrap
import fastwrap.asyncio
from _support import HANG, open_fds, random_bytes, run_python

DATA = random_bytes(3_000_017, seed=81)
BIG = random_bytes(24 * 1024 * 1024 + 3, seed=82)  # beyond any socket buffers
HEADERS = b"HTTP/1.1 200 OK\r\nX-Fastwrap: yes\r\n\r\n"


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is in the project's test extra")
    return uvloop.new_event_loop


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request, engine, monkeypatch) -> Callable[[Coroutine], Any]:
    """Run a coroutine to completion on the chosen loop, with the chosen engine."""
    factory = _uvloop_factory() if request.param == "uvloop" else asyncio.new_event_loop
    monkeypatch.setattr(fastwrap.asyncio, "_Transmission", engine.Transmission)

    def runner(coro: Coroutine) -> Any:
        loop = factory()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, HANG))
        finally:
            loop.close()

    runner.loop_kind = request.param  # type: ignore[attr-defined]
    return runner


class Client(threading.Thread):
    """A blocking client: connects, reads everything until EOF.

    With *cap*, it reads slowly (small buffer) and never more than *cap*
    bytes until *release* is set.
    """

    def __init__(self, address: Tuple[str, int], cap: Optional[int] = None,
                 release: Optional[threading.Event] = None, rcvbuf: Optional[int] = None) -> None:
        super().__init__(daemon=True)
        self.address, self.cap, self.release = address, cap, release
        self.rcvbuf = rcvbuf
        self.connected = threading.Event()
        self.capped = threading.Event()  # read *cap* bytes, waiting for release
        self.data = bytearray()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.settimeout(HANG)
            with sock:
                sock.connect(self.address)
                self.connected.set()
                while True:
                    slow = self.release is not None and not self.release.is_set()
                    if slow and self.cap is not None and len(self.data) >= self.cap:
                        self.capped.set()
                        if not self.release.wait(HANG):
                            raise TimeoutError("never released")
                        continue
                    want = 1 << 20
                    if slow:
                        want = min(1024, self.cap - len(self.data))
                    chunk = sock.recv(want)
                    if not chunk:
                        return
                    self.data += chunk
                    if slow:
                        threading.Event().wait(0.001)  # a very slow reader
        except BaseException as exc:
            self.error = exc
        finally:
            self.connected.set()
            self.capped.set()

    def result(self) -> bytes:
        self.join(HANG)
        assert not self.is_alive(), "client still reading"
        if self.error is not None:
            raise self.error
        return bytes(self.data)


def listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def serve_one(lst: socket.socket, source: Any, count: Optional[int] = None,
                    headers: bytes = b"") -> int:
    """Accept one connection, send *source* on it, close it; the body bytes sent."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(lst)
    with conn:
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        return await fastwrap.asyncio.sendfile(conn, source, count, headers)


async def send_and_close(conn: socket.socket, source: Any) -> int:
    with conn:
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        return await fastwrap.asyncio.sendfile(conn, source, None, HEADERS)


def exchange(run: Callable, make_source: Callable[[], Any], count: Optional[int] = None,
             headers: bytes = b"", rcvbuf: Optional[int] = 32 * 1024) -> Tuple[int, bytes, Any]:
    box: dict = {}

    async def main() -> int:
        with listener() as lst:
            client = Client(lst.getsockname(), rcvbuf=rcvbuf)
            client.start()
            box["client"] = client
            box["source"] = source = make_source()
            return await serve_one(lst, source, count, headers)

    sent = run(main())
    return sent, box["client"].result(), box["source"]


# -- byte-exact ------------------------------------------------------------------------

@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    opened: List[Any] = []

    def make(skip: int = 0) -> Any:
        f = open(path, "rb")
        opened.append(f)
        f.read(skip)  # buffered: the body starts at tell(), not at the fd offset
        return f

    yield make
    for f in opened:
        f.close()


@pytest.mark.parametrize("count", [None, 1_234_567, 0])
def test_file_wrapper_with_count_and_headers(run, engine, data_file, count):
    sent, received, source = exchange(
        run, lambda: engine.FileWrapper(data_file(skip=1001)), count, HEADERS)
    body = DATA[1001:] if count is None else DATA[1001:1001 + count]
    assert received == HEADERS + body
    assert sent == len(body)
    assert source.tell() == 1001 + len(body)  # left just after the last byte sent


def test_raw_file_takes_sendfile(run, data_file):
    before = fastwrap.stats()["sendfile"]
    sent, received, _ = exchange(run, lambda: data_file(), None, HEADERS)
    assert received == HEADERS + DATA and sent == len(DATA)
    after = fastwrap.stats()["sendfile"]
    assert after["transmissions"] - before["transmissions"] == 1
    assert after["bytes"] - before["bytes"] == len(DATA)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "BytesIO"])
@pytest.mark.parametrize("count", [None, 999_999])
def test_buffer_and_bytesio_sources(run, kind, count):
    make = {"bytes": lambda: DATA, "bytearray": lambda: bytearray(DATA),
            "memoryview": lambda: memoryview(DATA), "BytesIO": lambda: io.BytesIO(DATA)}[kind]
    sent, received, _ = exchange(run, make, count, HEADERS)
    body = DATA if count is None else DATA[:count]
    assert received == HEADERS + body and sent == len(body)


def test_count_beyond_the_source_sends_what_there_is(run):
    sent, received, _ = exchange(run, lambda: io.BytesIO(DATA[:5000]), 10_000, b"h:")
    assert (sent, received) == (5000, b"h:" + DATA[:5000])


def test_headers_only(run):
    sent, received, _ = exchange(run, lambda: b"", None, HEADERS)
    assert (sent, received) == (0, HEADERS)


def test_blocking_socket_is_refused(run):
    async def main() -> None:
        a, b = socket.socketpair()
        with a, b:
            with pytest.raises(ValueError, match="non-blocking"):
                await fastwrap.asyncio.sendfile(a, b"x")

    run(main())


# -- concurrency -------------------------------------------------------------------------

def test_slow_client_does_not_stall_fast_ones(run, engine, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(BIG)
    fast_n = 8

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener() as lst, open(big, "rb") as slow_file:
            release = threading.Event()
            address = lst.getsockname()
            slow = Client(address, cap=512 * 1024, release=release, rcvbuf=4096)
            slow.start()
            slow_task = asyncio.ensure_future(serve_one(lst, engine.FileWrapper(slow_file)))
            # Wait (in a thread, the loop keeps serving) until the slow one is under way.
            await loop.run_in_executor(None, slow.capped.wait, HANG)
            assert not slow_task.done()

            fast_tasks, fasts = [], []
            for i in range(fast_n):
                client = Client(address)
                client.start()
                fasts.append(client)
            for i in range(fast_n):
                # One accept at a time (uvloop allows one waiter per descriptor);
                # the sends then run side by side.
                conn, _ = await loop.sock_accept(lst)
                fast_tasks.append(asyncio.ensure_future(send_and_close(conn, DATA[i:])))
            sent = await asyncio.gather(*fast_tasks)
            results = [await loop.run_in_executor(None, c.result) for c in fasts]
            # Every fast client finished, byte-exact, while the slow transmission
            # is still waiting for its reader (the server side of "in progress").
            assert sent == [len(DATA) - i for i in range(fast_n)]
            # The clients connected in some order; each got one of the bodies.
            assert sorted(results, key=len, reverse=True) == [HEADERS + DATA[i:]
                                                              for i in range(fast_n)]
            assert not slow_task.done() and len(slow.data) <= 512 * 1024
            release.set()
            assert await slow_task == len(BIG)
            assert (await loop.run_in_executor(None, slow.result)) == BIG

    run(main())


# -- cancellation ------------------------------------------------------------------------

@pytest.mark.parametrize("disable", [(), ("sendfile",)], ids=["sendfile", "splice-or-other"])
def test_cancellation_mid_send_removes_the_writer_and_leaks_nothing(run, engine, tmp_path,
                                                                   disable):
    big = tmp_path / "big.bin"
    big.write_bytes(BIG)
    if disable:
        fastwrap.disable(*disable)  # splice needs a pipe of its own: it must be freed too

    async def main() -> None:
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        lst = listener()
        stopped = threading.Event()
        client = Client(lst.getsockname(), cap=64 * 1024, release=stopped, rcvbuf=4096)
        client.start()
        conn, _ = await loop.sock_accept(lst)
        conn.setblocking(False)
        f = open(big, "rb")
        task = asyncio.ensure_future(fastwrap.asyncio.sendfile(conn, f, None, HEADERS))
        await loop.run_in_executor(None, client.capped.wait, HANG)
        assert not task.done()  # blocked on a client that stopped reading
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not loop.remove_writer(conn.fileno())  # no writer left behind
        position = f.tell()
        conn.close()  # the client now reads what was sent, then EOF
        stopped.set()
        received = await loop.run_in_executor(None, client.result)
        # The file stands just after the last byte that left.
        assert received == HEADERS + BIG[:position]
        assert 0 < position < len(BIG)
        f.close()
        lst.close()
        assert open_fds() == baseline

    run(main())


def test_peer_gone_raises_and_cleans_up(run, engine, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(BIG)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        with listener() as lst:
            client = socket.create_connection(lst.getsockname())
            conn, _ = await loop.sock_accept(lst)
            conn.setblocking(False)
            with open(big, "rb") as f:
                task = asyncio.ensure_future(fastwrap.asyncio.sendfile(conn, f))
                await asyncio.sleep(0)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                client.close()  # reset: the send must fail, not hang
                with pytest.raises(OSError):
                    await task
                assert not loop.remove_writer(conn.fileno())
                assert f.tell() < len(BIG)
            conn.close()
        assert open_fds() == baseline

    run(main())


# -- the pure-Python engine, chosen the way an operator would -------------------------------

SUBPROCESS = r"""
import asyncio, io, json, socket, sys, threading
import fastwrap, fastwrap.asyncio

data = bytes(range(256)) * 40_000
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(data)

async def main():
    loop = asyncio.get_running_loop()
    lst = socket.create_server(("127.0.0.1", 0)); lst.setblocking(False)
    got = []
    def client():
        with socket.create_connection(lst.getsockname()) as c:
            buf = bytearray()
            while chunk := c.recv(65536):
                buf += chunk
            got.append(bytes(buf))
    t = threading.Thread(target=client); t.start()
    conn, _ = await loop.sock_accept(lst); conn.setblocking(False)
    with open(path, "rb") as f:
        f.read(100)
        sent = await fastwrap.asyncio.sendfile(conn, fastwrap.FileWrapper(f), 5_000_000, b"H")
    conn.close(); lst.close()
    await loop.run_in_executor(None, t.join)
    print(json.dumps({"implementation": fastwrap.IMPLEMENTATION, "sent": sent,
                      "exact": got[0] == b"H" + data[100:100 + 5_000_000],
                      "stats": fastwrap.stats()}))

asyncio.run(main())
"""


def test_no_extensions_environment_uses_the_python_engine(tmp_path):
    done = run_python(SUBPROCESS, env={"FASTWRAP_NO_EXTENSIONS": "1"},
                      args=[str(tmp_path / "data.bin")])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["implementation"] == "python"
    assert report["exact"] and report["sent"] == 5_000_000
    assert report["stats"]["sendfile"]["bytes"] == 5_000_000
