"""Running the interleaved rounds, and showing where the run is."""
from __future__ import annotations

import shutil
import statistics
import time
from typing import TextIO

from .model import SECTIONS, Contender, Table


# -- running the rounds ---------------------------------------------------------------------

class Progress:
    """Where the run is, on stderr: one line rewritten on a terminal, plain lines elsewhere."""

    def __init__(self, stream: TextIO, rounds: int) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._start = time.perf_counter()
        self._rounds = rounds
        self._round_started = self._start
        self._round_seconds: list[float] = []
        self.round = 0
        self._shown = False

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def start_round(self, number: int) -> None:
        """Round *number* begins; 0 when the rounds are over."""
        now = time.perf_counter()
        if self.round:
            self._round_seconds.append(now - self._round_started)
        self.round = number
        self._round_started = now

    def _prefix(self) -> str:
        text = f"fastwrap bench [{self.elapsed():4.0f} s]"
        if self.round:
            text += f" round {self.round}/{self._rounds}"
            if self._round_seconds:
                left = (self._rounds - self.round + 1) * statistics.mean(self._round_seconds)
                left -= time.perf_counter() - self._round_started
                text += f", about {max(left, 0):.0f} s left"
        return text

    def note(self, text: str) -> None:
        """A milestone: a line of its own where the line cannot be rewritten."""
        if self._tty:
            self.status(text)
        else:
            print(f"{self._prefix()}: {text}", file=self._stream, flush=True)

    def status(self, text: str) -> None:
        """Where it is right now; shown only on a terminal."""
        if not self._tty:
            return
        width = max(shutil.get_terminal_size().columns - 1, 20)
        line = f"{self._prefix()}: {text}"[:width]
        self._stream.write("\r" + line + "\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def rotated(items: list[Contender], by: int) -> list[Contender]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def take_sample(table: Table, contender: Contender, round_number: int, keep: bool) -> None:
    """Measure *contender* once; a failure is recorded and ends its part in the run."""
    assert contender.measure is not None
    try:
        sample = contender.measure(not keep)
    except Exception as exc:  # recorded and shown: one broken contender spoils no other
        contender.failed = f"{type(exc).__name__}: {exc}"
        return
    if keep:
        contender.rounds.append({"round": float(round_number), **sample.values})
        for path, count in sample.paths.items():
            contender.paths[path] = contender.paths.get(path, 0) + count


def run_rounds(tables: list[Table], rounds: int, progress: Progress) -> None:
    """Warm up, then every round: each table, each live contender in rotated order."""
    progress.note("warming up")
    for table in tables:
        if table.warmup:
            for contender in [c for c in table.contenders if c.live]:
                progress.status(f"warming up: {table.key}: {contender.name}")
                take_sample(table, contender, 0, keep=False)
    for number in range(1, rounds + 1):
        progress.start_round(number)
        section = ""
        for table in tables:
            if table.section != section:
                section = table.section
                progress.note(SECTIONS[section])
            for contender in rotated([c for c in table.contenders if c.live], number - 1):
                progress.status(f"{table.key}: {contender.name}")
                take_sample(table, contender, number, keep=True)
    progress.start_round(0)
