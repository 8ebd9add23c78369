"""fastwrap.asyncio.sendfile: a custom asyncio server over real loopback TCP.

Each test runs on the default event loop and on uvloop (when installed), and
with either engine (the ``engine`` fixture points the helper at it).  The
clients are blocking sockets in threads; the server is the event loop in the
test's thread: sockets it accepts itself, or ``asyncio.start_server`` streams.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import threading
from typing import Any, AsyncIterator, Callable, Coroutine, List, Optional, Tuple

import pytest

import fastwrap
import fastwrap.asyncio
from _support import HANG, needs_linux, open_fds, random_bytes, run_python
from test_waiting import evict, resident_pages

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


@pytest.mark.parametrize("disable", [(), ("sendfile",)], ids=["sendfile", "without-sendfile"])
def test_on_done_names_the_path_and_the_bytes_sent(run, data_file, disable):
    # For a server's log line: the path the stats counted the body under.
    for path in disable:
        fastwrap.disable(path)
    done: List[Tuple[str, int]] = []

    async def main() -> int:
        with listener() as lst:
            client = Client(lst.getsockname())
            client.start()
            conn, _ = await asyncio.get_running_loop().sock_accept(lst)
            with conn, data_file() as f:
                conn.setblocking(False)
                sent = await fastwrap.asyncio.sendfile(
                    conn, f, 1_000_000, HEADERS, on_done=lambda *a: done.append(a))
            assert client.result() == HEADERS + DATA[:1_000_000]
            return sent

    try:
        before = fastwrap.stats()
        assert run(main()) == 1_000_000
        after = fastwrap.stats()
    finally:
        fastwrap.enable(*disable)
    (path, sent), = done
    assert sent == 1_000_000
    assert path != "sendfile" if disable else path == "sendfile"
    assert after[path]["bytes"] - before[path]["bytes"] == 1_000_000


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


# -- asyncio streams: a StreamWriter, or its transport -------------------------------------

PREAMBLE = random_bytes(2 * 1024 * 1024 + 1, seed=83)  # more than the socket takes at once


async def serve(dest: str, send: Callable[[Any], Coroutine],
                make_client: Callable[[Tuple[str, int]], Client] = (
                    lambda address: Client(address, rcvbuf=32 * 1024))) -> Tuple[Any, bytes]:
    """Serve one connection, call ``send(target)`` on it; its result and what the client read.

    *dest* says what the server holds and hands to *send*: ``"socket"``, a
    socket it accepted itself; ``"writer"`` or ``"transport"``, the
    ``StreamWriter`` of an ``asyncio.start_server`` handler or its transport.
    The connection is closed when *send* returns.
    """
    loop = asyncio.get_running_loop()
    if dest == "socket":
        with listener() as lst:
            client = make_client(lst.getsockname())
            client.start()
            conn, _ = await loop.sock_accept(lst)
            with conn:
                conn.setblocking(False)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                result = await send(conn)
    else:
        finished = loop.create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            try:
                target = writer if dest == "writer" else writer.transport
                finished.set_result(await send(target))
            except BaseException as exc:
                finished.set_exception(exc)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            client = make_client(server.sockets[0].getsockname())
            client.start()
            result = await asyncio.shield(finished)
        finally:
            server.close()
    return result, await loop.run_in_executor(None, client.result)


@contextlib.asynccontextmanager
async def stream_pair(server_ssl: Any = None,
                      client_ssl: Any = None) -> AsyncIterator[Tuple[Any, Any]]:
    """Both ends of one streams connection on the running loop: (server's, client's)."""
    loop = asyncio.get_running_loop()
    accepted = loop.create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)),
                                        "127.0.0.1", 0, ssl=server_ssl)
    ends: List[Any] = []
    try:
        port = server.sockets[0].getsockname()[1]
        ends.append(await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl,
            server_hostname="localhost" if client_ssl else None))
        ends.insert(0, await accepted)
        yield ends[0], ends[1]
    finally:
        for _, writer in ends:
            writer.close()
        server.close()


@pytest.mark.parametrize("dest", ["writer", "transport"])
def test_stream_gets_the_file_after_what_the_writer_buffered(run, engine, data_file, dest):
    async def send(target: Any) -> Tuple[int, int, bool]:
        writer_transport = target.transport if dest == "writer" else target
        target.write(HEADERS)
        target.write(PREAMBLE)
        # The socket took part of it; the rest waits in the transport, to go first.
        assert writer_transport.get_write_buffer_size() > 0
        f = data_file(skip=1001)
        sent = await fastwrap.asyncio.sendfile(target, engine.FileWrapper(f), 2_000_000,
                                               headers=b"<chunk>")
        reading = writer_transport.is_reading()
        target.write(b"<after>")
        return sent, f.tell(), reading

    (sent, position, reading), received = run(serve(dest, send))
    assert received == HEADERS + PREAMBLE + b"<chunk>" + DATA[1001:2_001_001] + b"<after>"
    assert sent == 2_000_000 and position == 2_001_001
    assert reading  # paused while fastwrap owned the socket, resumed after


@pytest.mark.parametrize("dest", ["writer", "transport"])
@pytest.mark.parametrize("kind", ["bytes", "BytesIO"])
def test_stream_gets_buffers_exactly(run, dest, kind):
    source = {"bytes": lambda: BIG[:5_000_000], "BytesIO": lambda: io.BytesIO(BIG[:5_000_000])}

    async def send(target: Any) -> int:
        return await fastwrap.asyncio.sendfile(target, source[kind](), None, HEADERS)

    sent, received = run(serve(dest, send))
    assert (sent, received) == (5_000_000, HEADERS + BIG[:5_000_000])


def test_a_transports_socket_is_refused_before_the_first_byte(run, data_file):
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(HEADERS)
        f = data_file()
        with pytest.raises(ValueError, match="StreamWriter"):
            await fastwrap.asyncio.sendfile(writer.get_extra_info("socket"), f)
        assert f.tell() == 0
        writer.write(b"<refused>")

    _, received = run(serve("writer", send))
    assert received == HEADERS + b"<refused>"


@pytest.mark.parametrize("case", ["tls", "closing", "pipe"])
def test_streams_it_cannot_send_on_are_refused_before_the_first_byte(run, engine, tls_contexts,
                                                                     data_file, case):
    async def main() -> None:
        f = data_file()
        if case == "pipe":
            r, w = os.pipe()
            with open(r, "rb") as out, open(w, "wb") as pipe:
                transport, _ = await asyncio.get_running_loop().connect_write_pipe(
                    asyncio.Protocol, pipe)
                with pytest.raises(ValueError, match="socket"):
                    await fastwrap.asyncio.sendfile(transport, f)
                transport.close()
                await asyncio.sleep(0)
                assert out.read() == b""
        else:
            server_ssl, client_ssl = tls_contexts if case == "tls" else (None, None)
            async with stream_pair(server_ssl, client_ssl) as ((_, writer), (reader, _)):
                if case == "closing":
                    writer.close()
                    with pytest.raises(ConnectionError, match="closing"):
                        await fastwrap.asyncio.sendfile(writer, f)
                else:
                    with pytest.raises(ValueError, match="TLS"):
                        await fastwrap.asyncio.sendfile(writer, f, None, HEADERS)
                    writer.write(b"<refused>")
                    writer.close()
                    assert await reader.read() == b"<refused>"
        assert f.tell() == 0

    run(main())


def test_stream_cancelled_mid_file_stays_usable_and_leaks_nothing(run, engine, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(BIG)
    release = threading.Event()
    clients: List[Client] = []

    def slow_client(address: Tuple[str, int]) -> Client:
        clients.append(Client(address, cap=64 * 1024, release=release, rcvbuf=4096))
        return clients[0]

    async def send(writer: asyncio.StreamWriter) -> Tuple[int, bool]:
        loop = asyncio.get_running_loop()
        with open(big, "rb") as f:
            baseline = open_fds()
            writer.write(HEADERS)
            task = asyncio.ensure_future(fastwrap.asyncio.sendfile(writer, f))
            await loop.run_in_executor(None, clients[0].capped.wait, HANG)
            assert not task.done()  # blocked on a client that stopped reading
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert open_fds() == baseline  # the duplicate of the socket is closed
            reading = writer.transport.is_reading()
            writer.write(b"<after>")  # goes on just after the last file byte that left
            release.set()
            return f.tell(), reading

    (position, reading), received = run(serve("writer", send, slow_client))
    assert 0 < position < len(BIG)
    assert received == HEADERS + BIG[:position] + b"<after>"
    assert reading


# -- what the loop waits for: the source, the destination, the disk -------------------------

class Recorder:
    """The engine's Transmission class, counting ``send()`` calls and where ``fetch()`` ran.

    *events* lists the fetches' starts and ends and the closes, in order;
    *before_fetch*, when set, runs in the fetching thread before the fetch.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.sends = 0
        self.fetch_threads: List[int] = []
        self.events: List[str] = []
        self.before_fetch: Callable[[], None] = lambda: None

    def __call__(self, *args: Any, **kwargs: Any) -> "_Recorded":
        return _Recorded(self, self.cls(*args, **kwargs))


class _Recorded:
    def __init__(self, recorder: Recorder, tx: Any) -> None:
        self._recorder = recorder
        self._tx = tx

    def send(self) -> int:
        self._recorder.sends += 1
        return int(self._tx.send())

    def fetch(self) -> None:
        self._recorder.fetch_threads.append(threading.get_ident())
        self._recorder.events.append("fetch")
        self._recorder.before_fetch()
        self._tx.fetch()
        self._recorder.events.append("fetched")

    def close(self) -> None:
        self._recorder.events.append("close")
        self._tx.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


@pytest.fixture
def recorder(run, engine, monkeypatch) -> Recorder:
    made = Recorder(engine.Transmission)
    monkeypatch.setattr(fastwrap.asyncio, "_Transmission", made)
    return made


PIPED = random_bytes(50_000, seed=84)  # fits in a pipe: the feeder never blocks


@pytest.mark.parametrize("dest", ["socket", "writer"])
def test_an_empty_pipe_is_waited_for_not_polled(run, recorder, dest):
    r, w = os.pipe()
    os.set_blocking(r, False)

    def feed() -> None:
        with open(w, "wb") as pipe:
            pipe.write(PIPED)

    async def send(target: Any) -> int:
        # The source stays empty for half a second: the loop must sleep on
        # it, not ask the engine again and again.
        feeder = threading.Timer(0.5, feed)
        feeder.start()
        try:
            with open(r, "rb", buffering=0) as src:
                return await fastwrap.asyncio.sendfile(target, src, None, HEADERS)
        finally:
            feeder.join()

    sent, received = run(serve(dest, send))
    assert (sent, received) == (len(PIPED), HEADERS + PIPED)
    assert recorder.sends <= 10, f"{recorder.sends} send() calls for one wait"


@pytest.fixture
def cold_file(tmp_path) -> str:
    path = str(tmp_path / "cold.bin")
    with open(path, "wb") as f:
        f.write(BIG[:6_000_000])
    evict(path)
    if resident_pages(path):
        pytest.skip("this filesystem keeps evicted pages resident (no POSIX_FADV_DONTNEED)")
    return path


@needs_linux
@pytest.mark.parametrize("dest", ["socket", "writer"])
def test_a_cold_file_is_read_in_off_the_loop_while_the_loop_runs(run, recorder, cold_file,
                                                                 dest):
    ticks: List[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    async def send(target: Any) -> Tuple[int, int]:
        ticking = asyncio.ensure_future(ticker())
        try:
            with open(cold_file, "rb") as f:
                return await fastwrap.asyncio.sendfile(target, f), threading.get_ident()
        finally:
            ticking.cancel()

    (sent, loop_thread), received = run(serve(dest, send))
    assert sent == 6_000_000 and received == BIG[:6_000_000]
    assert recorder.fetch_threads, "the cold file was read on the loop"
    assert loop_thread not in recorder.fetch_threads
    assert ticks  # the loop ran other tasks during the transfer


@needs_linux
def test_cancelled_during_a_fetch_the_transmission_closes_after_it(run, recorder, cold_file):
    fetching, cancelled = threading.Event(), threading.Event()

    def hold() -> None:
        fetching.set()
        assert cancelled.wait(HANG)

    recorder.before_fetch = hold

    async def send(conn: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        with open(cold_file, "rb") as f:
            task = asyncio.ensure_future(fastwrap.asyncio.sendfile(conn, f))
            await loop.run_in_executor(None, fetching.wait, HANG)
            task.cancel()
            await asyncio.sleep(0)  # the cancellation reaches the task mid-fetch
            cancelled.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            return f.tell()

    position, received = run(serve("socket", send))
    # The file was read from (and the transmission open) until the fetch returned.
    assert recorder.events[:3] == ["fetch", "fetched", "close"]
    assert received == BIG[:position]


@needs_linux
def test_read_of_a_cold_file_cancelled_leaves_it_where_it_was(run, cold_file):
    async def main() -> None:
        with open(cold_file, "rb") as f:
            f.seek(1000)
            reading = asyncio.ensure_future(fastwrap.asyncio.read(f, 256 * 1024))
            await asyncio.sleep(0)  # in a worker thread now: the file is cold
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            assert f.tell() == 1000  # the bytes read went nowhere
            assert await fastwrap.asyncio.read(f, 10) == BIG[1000:1010]

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
