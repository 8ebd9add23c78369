"""python -m fastwrap bench: a quick run's table and JSON, its cleanup, and its errors.

One quick run (a few seconds) is shared by the tests that read its output;
it measures both engines itself, so it runs once, not once per engine.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Optional

import pytest

from _support import CTRL_C, HANG, LINUX, SRC, run_python
from conftest import import_compiled_engine

from fastwrap import _bench
from fastwrap._bench import model

# The package's names plot and report are its functions; these are their modules.
plot = importlib.import_module("fastwrap._bench.plot")
report = importlib.import_module("fastwrap._bench.report")

BENCH = ("import sys, runpy; sys.argv = ['fastwrap', 'bench', *sys.argv[1:]]; "
         "runpy.run_module('fastwrap', run_name='__main__')")
# As if matplotlib were not installed, whether or not it is: None in
# sys.modules makes every import of it raise ImportError.
WITHOUT_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; " + BENCH

# Every child the bench starts inherits this variable: a process still
# carrying it after the bench ended is one it left behind.
MARK = "FASTWRAP_BENCH_TEST_MARK"


#: --plot needs matplotlib, which fastwrap does not: plot where it is installed.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


class QuickRun:
    def __init__(self, proc: subprocess.CompletedProcess, data: dict, tmpdir: Path,
                 out: Path, png: Optional[Path]) -> None:
        self.proc = proc
        self.data = data
        self.tmpdir = tmpdir
        self.out = out
        self.png = png


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> QuickRun:
    """`fastwrap bench --quick --json out.json [--plot out.png]`, its temporary files in a
    directory of its own."""
    tmpdir = tmp_path_factory.mktemp("bench-tmp")
    outdir = tmp_path_factory.mktemp("bench-out")
    out, png = outdir / "out.json", (outdir / "out.png" if HAVE_MATPLOTLIB else None)
    args = ["--quick", "--json", str(out)] + (["--plot", str(png)] if png else [])
    proc = run_python(BENCH, args=args, env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return QuickRun(proc, json.loads(out.read_text()), tmpdir, out, png)


def measured(data: dict):
    """(table, contender) for every contender that was not skipped."""
    for table in data["tables"]:
        for contender in table["contenders"]:
            if contender["skipped"] is None:
                yield table, contender


def values(table: dict, name: str, metric: str) -> list[float]:
    if metric in table["derived"]:
        return [row["value"] for row in table["derived"][metric][name]["rounds"]]
    contender = next(c for c in table["contenders"] if c["name"] == name)
    return [entry[metric] for entry in contender["rounds"]]


def test_quick_run_prints_every_section(quick):
    for title in _bench.SECTIONS.values():
        assert title in quick.proc.stdout
    for table in quick.data["tables"]:
        assert table["title"] in quick.proc.stdout
    assert "FAILED" not in quick.proc.stdout + quick.proc.stderr
    # Progress goes to stderr, as plain lines when it is not a terminal.
    assert "round 1/2" in quick.proc.stderr and "\r" not in quick.proc.stderr


def test_json_describes_the_machine(quick):
    machine = quick.data["machine"]
    for key in ("platform", "kernel", "cpu_count", "python", "fastwrap_version",
                "implementation", "date"):
        assert machine[key], key
    assert machine["implementation"] in ("cython", "python")
    assert quick.data["settings"]["rounds"] == 2


def test_json_has_every_round_of_every_contender_with_positive_figures(quick):
    sections = {table["section"] for table in quick.data["tables"]}
    assert sections == set(_bench.SECTIONS)
    count = 0
    for table, contender in measured(quick.data):
        assert contender["failed"] is None, (table["key"], contender["name"], contender["failed"])
        rounds = contender["rounds"]
        assert [entry["round"] for entry in rounds] == [1, 2], (table["key"], contender["name"])
        for entry in rounds:
            for metric in table["metrics"]:
                assert entry[metric["key"]] > 0, (table["key"], contender["name"], entry)
        count += 1
    assert count >= 40


def test_skipped_rows_say_why(quick):
    for table in quick.data["tables"]:
        for contender in table["contenders"]:
            if contender["skipped"] is not None:
                assert contender["skipped"].strip()
                assert contender["rounds"] == []


def test_fastwrap_rows_took_the_path_they_name(quick):
    for table, contender in measured(quick.data):
        if contender["path"] is not None:
            assert set(contender["paths_taken"]) == {contender["path"]}, (table["key"], contender)


def test_json_ratios_are_the_ratios_of_the_medians(quick):
    checked = 0
    for table in quick.data["tables"]:
        for entry in table["ratios"]:
            mine = statistics.median(values(table, entry["contender"], entry["metric"]))
            theirs = statistics.median(values(table, entry["baseline"], entry["metric"]))
            expected = mine / theirs if entry["higher_is_better"] else theirs / mine
            assert math.isclose(entry["value"], expected, rel_tol=1e-9), (table["key"], entry)
            checked += 1
    assert checked >= 30
    for table in quick.data["tables"]:
        roles = {c["role"] for c in table["contenders"] if c["rounds"]}
        if {"fastwrap", "baseline"} <= roles:
            assert table["ratios"], table["key"]


def test_both_engines_are_measured(quick):
    engines = {contender["engine"] for _table, contender in measured(quick.data)}
    assert "python" in engines
    if import_compiled_engine() is not None:
        assert "cython" in engines


def test_leaves_no_temporary_files(quick):
    assert list(quick.tmpdir.iterdir()) == []


def test_ends_with_what_it_found_and_where_it_wrote_the_json_and_the_plot(quick):
    lines = quick.proc.stdout.rstrip("\n").splitlines()
    start = lines.index("Found (medians; Nx: N times better than that baseline):")
    closing = lines[start + 1:]
    engine = quick.data["machine"]["implementation"]
    assert closing[0].startswith(f"  a) the largest file, loopback TCP: fastwrap {engine} "
                                 "sendfile "), closing
    assert " GB/s (" in closing[0] and "x socket.sendfile" in closing[0]
    assert closing[1].startswith("  b) 4 KiB files over HTTP: fastwrap serve ")
    assert "x python -m http.server" in closing[1]
    assert closing[2].startswith(f"  c) one 4 KiB transmission, loopback TCP: fastwrap {engine} ")
    assert " us over a bare os.sendfile" in closing[2]
    written = [f"Every round, as JSON: {quick.out}"]
    if quick.png:
        written.append(f"The plot: {quick.png}")
    assert closing[-len(written):] == written
    assert all(line.startswith("  ") for line in closing[:-len(written)]), closing


def test_quick_run_shows_no_negative_overhead(quick):
    tables = [t for t in quick.data["tables"] if t["section"] == "c"]
    assert tables and quick.data["settings"]["cost_batches"] == model.COST_BATCHES > 1
    for table in tables:
        for name, derived in table["derived"]["overhead_us"].items():
            assert derived["min"] >= 0, (table["key"], name, derived)
    text = quick.proc.stdout
    section = text[text.index(_bench.SECTIONS["c"]):text.index(_bench.SECTIONS["d"])]
    assert not re.search(r"(?<![\w.])-\d", section), section


def _cost_table(bare: list, cython: list) -> model.Table:
    """Table c as the rounds left it: us per transmission of two contenders per round."""
    def rounds(micros: list) -> list:
        return [{"round": float(n), "us_per_transmission": us, "cpu_us_per_transmission": us}
                for n, us in enumerate(micros, 1)]
    contenders = [
        model.Contender("os.sendfile, bare", model.REFERENCE, None, rounds=rounds(bare)),
        model.Contender("fastwrap cython", model.FASTWRAP, None, engine="cython",
                        rounds=rounds(cython))]
    return model.Table("c/tcp", "c", "4 KiB x 128 per sample, loopback TCP",
                       (model.MICROS, model.CPU_MICROS), contenders, [], (model.OVERHEAD,),
                       reference="os.sendfile, bare")


def test_an_overhead_below_zero_is_shown_as_0_with_a_note():
    # Round 1: the bare os.sendfile's sample was the slower by noise.
    table = _cost_table(bare=[10.0, 10.0, 10.0], cython=[9.0, 12.0, 13.0])
    settings = model.Settings.from_args(argparse.Namespace(quick=True, rounds=3, size_mib=None))
    data = report.report([table], settings, _bench.machine(), 1.0)
    derived = data["tables"][0]["derived"]["overhead_us"]["fastwrap cython"]
    assert [r["value"] for r in derived["rounds"]] == [0.0, 2.0, 3.0]
    assert [r["measured"] for r in derived["rounds"]] == [-1.0, 2.0, 3.0]
    assert (derived["min"], derived["median"]) == (0.0, 2.0)
    text = report.render([table], data)
    row = next(line for line in text.splitlines() if line.strip().startswith("fastwrap cython"))
    assert row.split()[-1] == "[0..3.00]" and "-1" not in row, row
    assert "fastwrap cython in 1 of 3 rounds" in text


def test_an_overhead_never_below_zero_gets_no_note():
    table = _cost_table(bare=[10.0, 10.0], cython=[12.0, 13.0])
    settings = model.Settings.from_args(argparse.Namespace(quick=True, rounds=2, size_mib=None))
    text = report.render([table], report.report([table], settings, _bench.machine(), 1.0))
    assert "counted as 0" not in text


def test_plot_has_a_legend_naming_every_colour_of_its_bars(quick):
    if not HAVE_MATPLOTLIB:
        pytest.skip("matplotlib is not installed: --plot cannot draw")
    colors = importlib.import_module("matplotlib.colors")
    assert quick.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = plot.figure(quick.data)
    try:
        (legend,) = figure.legends
        texts = [text.get_text() for text in legend.get_texts()]
        labels = dict(plot.KINDS)
        bars = {colors.to_hex(patch.get_facecolor()) for axis in figure.axes
                for patch in axis.patches}
        shown = {colors.to_hex(c) for c, label in plot.KINDS if label in texts}
        assert bars and bars == shown, (bars, texts)
        assert [labels[c] for c in labels if colors.to_hex(c) in bars] == texts[:-1]
        assert texts[-1].startswith(f"min-max over {quick.data['settings']['rounds']} rounds")
    finally:
        importlib.import_module("matplotlib.pyplot").close(figure)


def test_plot_without_matplotlib_is_a_clear_error_before_measuring(tmp_path):
    png = tmp_path / "bench.png"
    proc = run_python(WITHOUT_MATPLOTLIB, args=["--quick", "--plot", str(png)], timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "pip install matplotlib" in proc.stderr
    assert proc.stdout == "" and not png.exists()


@pytest.mark.parametrize("args, words", [
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--size-mib", "many"], "--size-mib must be a whole number"),
    (["--json", "/nonexistent-dir/out.json"], "--json: no directory"),
])
def test_bad_arguments_are_usage_errors(args, words):
    proc = run_python(BENCH, args=args, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert proc.stdout == ""


def _bench_env(tmpdir: Path, mark: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTWRAP_NO_EXTENSIONS", "FASTWRAP_DISABLE")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["TMPDIR"] = str(tmpdir)
    env[MARK] = mark
    return env


def _marked_processes(mark: str) -> list[int]:
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass  # gone already, or not ours to read
    return found


@pytest.mark.skipif(not LINUX, reason="finds leftover processes through /proc")
def test_ctrl_c_stops_every_child_and_removes_the_files(tmp_path):
    mark = uuid.uuid4().hex
    # Enough rounds that the run is still going when the interrupt comes.
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C + BENCH, "--quick", "--rounds", "50"],
                            env=_bench_env(tmp_path, mark),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(HANG, proc.kill)
    guard.start()
    try:
        for line in proc.stderr:  # plain progress lines: the rounds have begun
            if "round 1/" in line:
                break
        assert len(_marked_processes(mark)) > 1, "the bench started no children"
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait() == 130, rest
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in rest
    assert _marked_processes(mark) == []
    assert list(tmp_path.iterdir()) == []
