"""Which path carries the bytes, switching paths off, and each path really taken."""
from __future__ import annotations

import array
import gzip
import io
import logging
import mmap
import os
import tempfile
import wsgiref.util

import pytest

import fastwrap
from _support import (ALL_PATHS, LINUX, ReadOnly, drive, expected_path, needs_linux,
                      random_bytes, run_python)

DATA = random_bytes(300_000, seed=10)


def test_paths_are_the_five_fastest_first():
    assert fastwrap.PATHS == ("sendfile", "splice", "mmap", "readinto", "read")


def test_engine_supports_only_known_paths_and_always_read(engine):
    assert set(engine.SUPPORTED_PATHS) <= set(fastwrap.PATHS)
    assert {"mmap", "readinto", "read"} <= set(engine.SUPPORTED_PATHS)
    assert set(engine.available_paths()) <= set(engine.SUPPORTED_PATHS)
    assert list(engine.available_paths()) == [
        p for p in fastwrap.PATHS if p in engine.available_paths()]


@needs_linux
def test_every_path_is_available_on_linux(engine):
    expected = set(fastwrap.PATHS)
    if engine.IMPLEMENTATION == "python" and not hasattr(os, "splice"):
        expected.discard("splice")  # os.splice is Python 3.10+
    assert set(engine.available_paths()) == expected


# -- select_path for every kind of source -------------------------------------

class _Subclass(io.BufferedReader):
    def read(self, size=-1):  # may transform what it reads: no fd shortcut
        return super().read(size)


def _file_sources(sources, tmp_path):
    path = sources.path(DATA)
    named = tempfile.NamedTemporaryFile(dir=tmp_path)
    named.write(DATA)
    named.flush()
    named.seek(0)
    sources._stack.callback(named.close)
    return {
        "BufferedReader": sources.opened(path, "rb"),
        "FileIO": sources.opened(path, "rb", buffering=0),
        "BufferedRandom": sources.opened(path, "r+b"),
        "NamedTemporaryFile": named,
        "fastwrap.FileWrapper": None,  # filled in by the test (needs the engine)
        "wsgiref.FileWrapper": wsgiref.util.FileWrapper(sources.opened(path, "rb")),
    }


@pytest.mark.parametrize("kind", ["BufferedReader", "FileIO", "BufferedRandom",
                                  "NamedTemporaryFile", "fastwrap.FileWrapper",
                                  "wsgiref.FileWrapper"])
def test_regular_file_to_plain_socket_selects_sendfile(engine, sources, tmp_path, link, kind):
    source = _file_sources(sources, tmp_path)[kind]
    if source is None:
        source = engine.FileWrapper(sources.file(DATA))
    assert engine.select_path(source, link.dest) == "sendfile"


@needs_linux
def test_regular_file_to_pipe_or_file_descriptor_selects_sendfile(engine, sources, tmp_path):
    r, w = os.pipe()
    try:
        assert engine.select_path(sources.file(DATA), w) == "sendfile"
        with open(tmp_path / "out", "wb") as out:
            assert engine.select_path(sources.file(DATA), out) == "sendfile"
    finally:
        os.close(r)
        os.close(w)


def test_regular_file_to_tls_socket_selects_readinto(engine, sources, tls_link):
    assert engine.select_path(sources.file(DATA), tls_link.dest) == "readinto"


def test_empty_file_selects_readinto(engine, sources, link):
    assert engine.select_path(sources.file(b""), link.dest) == "readinto"


@needs_linux
def test_proc_file_of_size_zero_selects_readinto(engine, sources, link):
    f = sources.opened("/proc/self/status", "rb")
    assert os.fstat(f.fileno()).st_size == 0
    assert engine.select_path(f, link.dest) == "readinto"


def test_pipe_selects_splice_where_available(engine, sources, link):
    expected = "splice" if LINUX and "splice" in engine.SUPPORTED_PATHS else "readinto"
    assert engine.select_path(sources.pipe(b"x"), link.dest) == expected
    assert engine.select_path(sources.pipe(b"x", buffering=0), link.dest) == expected


@needs_linux
def test_character_device_selects_splice(engine, sources, link):
    expected = "splice" if "splice" in engine.SUPPORTED_PATHS else "readinto"
    assert engine.select_path(sources.opened("/dev/zero", "rb"), link.dest) == expected


@pytest.mark.parametrize("make", [
    lambda: DATA, lambda: bytearray(DATA), lambda: memoryview(DATA),
    lambda: array.array("i", range(100)), lambda: memoryview(DATA)[10:100],
], ids=["bytes", "bytearray", "memoryview", "array", "memoryview-slice"])
def test_buffers_select_mmap(engine, link, make):
    assert engine.select_path(make(), link.dest) == "mmap"


def test_mmap_selects_mmap(engine, sources, link):
    assert engine.select_path(sources.mmap(DATA), link.dest) == "mmap"
    anonymous = mmap.mmap(-1, 4096)
    try:
        assert engine.select_path(anonymous, link.dest) == "mmap"
    finally:
        anonymous.close()


def test_buffer_to_tls_selects_mmap(engine, tls_link):
    assert engine.select_path(DATA, tls_link.dest) == "mmap"


def test_object_with_readinto_selects_readinto(engine, link):
    assert engine.select_path(io.BytesIO(DATA), link.dest) == "readinto"


def test_object_with_only_read_selects_read(engine, link):
    assert engine.select_path(ReadOnly(DATA), link.dest) == "read"


def test_gzip_file_is_never_sent_by_sendfile(engine, tmp_path, link):
    # GzipFile.fileno() is the *compressed* file's descriptor.
    path = tmp_path / "data.gz"
    with gzip.open(path, "wb") as f:
        f.write(DATA)
    with gzip.open(path, "rb") as f:
        assert engine.select_path(f, link.dest) == "readinto"
        sent, received = link.exchange(lambda: engine.FileWrapper(f).transmit(link.dest))
    assert received == DATA
    assert sent == len(DATA)


def test_buffered_reader_subclass_that_overrides_read_is_not_sent_from_its_fd(
        engine, sources, link):
    path = sources.path(DATA)
    f = _Subclass(io.FileIO(path, "rb"))
    try:
        assert engine.select_path(f, link.dest) in ("readinto", "read")
    finally:
        f.close()


def test_select_path_of_wrapper_equals_that_of_its_file(engine, sources, link):
    f = sources.file(DATA)
    assert engine.select_path(engine.FileWrapper(f), link.dest) == \
        engine.select_path(f, link.dest)
    assert engine.select_path(engine.FileWrapper(DATA), link.dest) == "mmap"


# -- switching paths off -------------------------------------------------------

def test_disabled_sendfile_sends_regular_files_by_readinto(engine, sources, link):
    fastwrap.disable("sendfile")
    assert "sendfile" not in engine.available_paths()
    assert engine.select_path(sources.file(DATA), link.dest) == "readinto"
    fastwrap.enable("sendfile")
    assert "sendfile" in engine.available_paths()
    assert engine.select_path(sources.file(DATA), link.dest) == "sendfile"


def test_disabled_mmap_sends_buffers_by_read(engine, sources, link):
    fastwrap.disable("mmap")
    assert "mmap" not in engine.available_paths()
    assert engine.select_path(DATA, link.dest) == "read"
    assert engine.select_path(sources.mmap(DATA), link.dest) == "read"


@needs_linux
def test_disabled_splice_sends_pipes_by_readinto(engine, sources, link):
    fastwrap.disable("splice")
    assert engine.select_path(sources.pipe(b"x"), link.dest) == "readinto"


def test_disabled_readinto_sends_by_read(engine, sources, link):
    fastwrap.disable("readinto", "sendfile")
    assert engine.select_path(io.BytesIO(DATA), link.dest) == "read"
    assert engine.select_path(sources.file(DATA), link.dest) == "read"


def test_enable_and_disable_take_several_names_and_are_idempotent(engine):
    fastwrap.disable("sendfile", "mmap")
    fastwrap.disable("sendfile")
    assert not {"sendfile", "mmap"} & set(engine.available_paths())
    fastwrap.enable("sendfile", "mmap")
    fastwrap.enable("mmap")
    assert {"mmap"} <= set(engine.available_paths())


def test_the_read_path_cannot_be_disabled(engine):
    with pytest.raises(ValueError, match="read"):
        fastwrap.disable("read")
    with pytest.raises(ValueError):
        fastwrap.enable("read")
    assert "read" in engine.available_paths()


@pytest.mark.parametrize("name", ["bogus", "SENDFILE", "", "send file"])
def test_unknown_path_names_are_value_errors(engine, name):
    before = engine.available_paths()
    with pytest.raises(ValueError):
        fastwrap.disable(name)
    with pytest.raises(ValueError):
        fastwrap.enable(name)
    assert engine.available_paths() == before


def test_disable_with_an_unknown_name_disables_nothing(engine):
    with pytest.raises(ValueError):
        fastwrap.disable("sendfile", "bogus")
    assert "sendfile" in engine.available_paths() or \
        "sendfile" not in engine.SUPPORTED_PATHS


def test_skipped_path_is_logged_at_debug_level(engine, sources, tls_link, caplog):
    caplog.set_level(logging.DEBUG, logger="fastwrap")
    fastwrap.disable("mmap")
    engine.select_path(sources.file(DATA), tls_link.dest)
    engine.select_path(DATA, tls_link.dest)
    text = caplog.text
    assert "sendfile" in text and "TLS" in text
    assert "mmap" in text and "disabled" in text
    assert all(r.name == "fastwrap" and r.levelno == logging.DEBUG for r in caplog.records)


def _engine_env(engine):
    return {"FASTWRAP_NO_EXTENSIONS": "1"} if engine.IMPLEMENTATION == "python" else {}


def test_fastwrap_disable_environment_variable_is_read_at_import(engine):
    code = (
        "import io, socket, fastwrap\n"
        "a, b = socket.socketpair()\n"
        "print(fastwrap.IMPLEMENTATION)\n"
        "print(','.join(fastwrap.available_paths()))\n"
        "print(fastwrap.select_path(b'x', a), fastwrap.select_path(io.BytesIO(b'x'), a))\n"
    )
    env = dict(_engine_env(engine), FASTWRAP_DISABLE=" splice, MMAP ,")
    proc = run_python(code, env=env)
    assert proc.returncode == 0, proc.stderr
    implementation, available, selected = proc.stdout.splitlines()
    assert implementation == engine.IMPLEMENTATION
    assert "splice" not in available.split(",") and "mmap" not in available.split(",")
    assert {"readinto", "read"} <= set(available.split(","))
    assert selected == "read readinto"


@pytest.mark.parametrize("spec", ["read", "sendfile,bogus"])
def test_fastwrap_disable_with_bad_names_fails_the_import_clearly(engine, spec):
    proc = run_python("import fastwrap", env=dict(_engine_env(engine), FASTWRAP_DISABLE=spec))
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "FASTWRAP_DISABLE" in proc.stderr


# -- every path taken end to end -----------------------------------------------

@pytest.mark.parametrize("path", ALL_PATHS)
def test_each_path_is_really_taken_end_to_end(engine, sources, link, path):
    tx = engine.Transmission(sources.of_path(path, DATA), link.dest)
    assert tx.path == expected_path(engine, path)
    moved, received = link.exchange(lambda: drive(tx, link.dest))
    assert received == DATA
    assert tx.path == expected_path(engine, path)
    assert tx.done and tx.sent == moved == len(DATA)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_each_path_sends_through_filewrapper_transmit(engine, sources, link, path):
    wrapper = engine.FileWrapper(sources.of_path(path, DATA))
    sent, received = link.exchange(lambda: wrapper.transmit(link.dest))
    assert received == DATA
    assert sent == len(DATA)


def test_readinto_path_from_a_regular_file_with_sendfile_disabled(engine, sources, link):
    fastwrap.disable("sendfile")
    tx = engine.Transmission(sources.file(DATA), link.dest)
    assert tx.path == "readinto"
    moved, received = link.exchange(lambda: drive(tx, link.dest))
    assert received == DATA and tx.sent == len(DATA)


def test_read_path_from_a_buffer_with_mmap_disabled(engine, link):
    fastwrap.disable("mmap")
    tx = engine.Transmission(bytearray(DATA), link.dest)
    assert tx.path == "read"
    moved, received = link.exchange(lambda: drive(tx, link.dest))
    assert received == DATA and tx.sent == len(DATA)


@needs_linux
def test_character_device_is_sent_end_to_end(engine, sources, link):
    zero = sources.opened("/dev/zero", "rb")
    sent, received = link.exchange(
        lambda: engine.FileWrapper(zero).transmit(link.dest, 1_000_003))
    assert sent == 1_000_003
    assert received == bytes(1_000_003)


@needs_linux
@pytest.mark.parametrize("path", ["sendfile", "splice", "mmap", "readinto", "read"])
def test_each_path_writes_to_a_pipe_destination(engine, sources, path):
    r, w = os.pipe()
    out = bytearray()
    import threading

    def drain():
        while chunk := os.read(r, 1 << 16):
            out.extend(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        sent = engine.transmit_file(sources.of_path(path, DATA), w)
    finally:
        os.close(w)
        thread.join()
        os.close(r)
    assert sent == len(DATA)
    assert bytes(out) == DATA
