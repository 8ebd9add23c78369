"""Summing up: the medians and ratios --json writes, and the text table printed."""
from __future__ import annotations

import statistics
from typing import Any, Sequence

from .model import (
    COST_BATCHES, MICROS, OVERHEAD, SECTION_NOTES, SECTIONS, Metric, Settings, Table,
)


# -- summing up -------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(fastwrap_median: float, baseline_median: float, higher_is_better: bool) -> float:
    """Above 1 when fastwrap does better, whichever way the metric points."""
    if higher_is_better:
        return fastwrap_median / baseline_median
    return baseline_median / fastwrap_median


def derive_overhead(table: Table) -> None:
    """Per round: each contender's time per transmission less the reference's.

    No way of sending costs less than the bare os.sendfile it wraps: a
    difference below zero says only that the reference's sample was the
    slower one, by noise.  It counts as 0 (its "measured" value is kept),
    and a note under the table says where that happened.
    """
    if table.reference is None:
        return
    reference = table.contender(table.reference)
    base = {entry["round"]: entry[MICROS.key] for entry in reference.rounds}
    overheads: dict[str, list[dict[str, float]]] = {}
    below = []
    for contender in table.contenders:
        if contender.name == reference.name or not contender.rounds:
            continue
        rows = []
        for entry in contender.rounds:
            if entry["round"] in base:
                measured = entry[MICROS.key] - base[entry["round"]]
                rows.append({"round": entry["round"], "value": max(measured, 0.0),
                             "measured": measured})
        if rows:
            overheads[contender.name] = rows
        rounds = sum(1 for row in rows if row["measured"] < 0)
        if rounds:
            below.append(f"{contender.name} in {rounds} of {len(rows)}")
    table.derived[OVERHEAD.key] = overheads
    if below:
        table.notes += ("overhead counted as 0 where it came out below 0, which only noise "
                        f"in the reference's sample can do: {'; '.join(below)} rounds",)


def metric_values(table: Table, name: str, metric: Metric) -> list[float]:
    if metric.key in table.derived:
        return [row["value"] for row in table.derived[metric.key].get(name, [])]
    return table.contender(name).values(metric.key)


def table_ratios(table: Table) -> list[dict[str, Any]]:
    """Every pair's ratio for every metric where both medians exist (and are above 0)."""
    found = []
    metrics = list(table.metrics) + [m for m in (OVERHEAD,) if m.key in table.derived]
    for name, baseline in table.pairs:
        for metric in metrics:
            mine = metric_values(table, name, metric)
            theirs = metric_values(table, baseline, metric)
            if not mine or not theirs:
                continue
            a, b = statistics.median(mine), statistics.median(theirs)
            if a <= 0 or b <= 0:
                continue  # an overhead lost in the noise has no meaningful ratio
            found.append({"contender": name, "baseline": baseline, "metric": metric.key,
                          "higher_is_better": metric.higher_is_better,
                          "value": ratio(a, b, metric.higher_is_better)})
    return found


def report(tables: list[Table], settings: Settings, described: dict[str, Any],
           seconds: float) -> dict[str, Any]:
    """Everything measured, as the --json file holds it."""
    out_tables = []
    for table in tables:
        derive_overhead(table)
        contenders = []
        for c in table.contenders:
            entry: dict[str, Any] = {
                "name": c.name, "role": c.role, "engine": c.engine, "path": c.path,
                "skipped": c.skipped, "failed": c.failed, "paths_taken": c.paths,
                "rounds": [dict(r, round=int(r["round"])) for r in c.rounds]}
            if c.rounds:
                entry["summary"] = {m.key: summary(c.values(m.key)) for m in table.metrics}
            contenders.append(entry)
        derived = {key: {name: {"rounds": [dict(r, round=int(r["round"])) for r in rows],
                                **summary([r["value"] for r in rows])}
                         for name, rows in per_name.items()}
                   for key, per_name in table.derived.items()}
        out_tables.append({
            "key": table.key, "section": table.section, "section_title": SECTIONS[table.section],
            "title": table.title, "notes": list(table.notes),
            "metrics": [{"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}
                        for m in table.metrics],
            "contenders": contenders, "derived": derived, "ratios": table_ratios(table)})
    return {
        "machine": described,
        "settings": {"rounds": settings.rounds, "quick": settings.quick,
                     "large_bytes": settings.large, "small_times": settings.small_times,
                     "medium_times": settings.medium_times, "cost_times": settings.cost_times,
                     "cost_batches": COST_BATCHES,
                     "http_seconds": settings.http_seconds, "clients": settings.clients},
        "ratio_meaning": "fastwrap's median over the baseline's for higher-is-better metrics, "
                         "the baseline's over fastwrap's otherwise: above 1, fastwrap does better",
        "seconds": seconds,
        "tables": out_tables,
    }


# -- the text table ------------------------------------------------------------------------------

def fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.2g}" if magnitude < 0.01 else f"{value:.3f}"


def spread(values: Sequence[float]) -> str:
    s = summary(values)
    return f"{fmt(s['median'])} [{fmt(s['min'])}..{fmt(s['max'])}]"


def render_rows(rows: list[list[str]], indent: str) -> list[str]:
    """Columns padded to their widest cell: the first to the left, the others to the right."""
    def wide(row: list[str]) -> bool:  # a skipped or failed row: one cell for the rest
        return len(row) == 2 and len(rows[0]) > 2

    widths = [max(len(row[i]) for row in rows if i == 0 or not wide(row))
              for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        if wide(row):
            lines.append(indent + row[0].ljust(widths[0]) + "  " + row[1])
            continue
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def render_table(table: Table, ratios: list[dict[str, Any]]) -> list[str]:
    columns = list(table.metrics) + ([OVERHEAD] if OVERHEAD.key in table.derived else [])
    baselines = list(dict.fromkeys(b for _n, b in table.pairs))
    ratio_columns = [(b, m) for m in table.shown for b in baselines]
    header = ["contender"] + [m.label for m in columns] + [
        f"x {table.contender(b).short}" + (f" {m.tag}" if m.tag else "")
        for b, m in ratio_columns]
    rows = [header]
    lookup = {(r["contender"], r["baseline"], r["metric"]): r["value"] for r in ratios}
    for c in table.contenders:
        label = c.name
        if c.paths and c.path is None:
            label += " [" + ", ".join(sorted(c.paths)) + "]"
        if c.skipped:
            rows.append([label, f"skipped: {c.skipped}"])
            continue
        if c.failed and not c.rounds:
            rows.append([label, f"FAILED: {c.failed}"])
            continue
        row = [label]
        for metric in columns:
            values = metric_values(table, c.name, metric)
            row.append(spread(values) if values else "-")
        for baseline, metric in ratio_columns:
            value = lookup.get((c.name, baseline, metric.key))
            row.append(f"{value:.2f}" if value is not None else "")
        rows.append(row)
        if c.failed:
            rows.append(["", f"FAILED in a later round: {c.failed}"])
    lines = [f"  {table.title}"] + [f"    {note}" for note in table.notes]
    return lines + render_rows(rows, "    ")


def render(tables: list[Table], data: dict[str, Any]) -> str:
    m = data["machine"]
    settings = data["settings"]
    lines = [
        f"fastwrap bench: fastwrap {m['fastwrap_version']} ({m['implementation']} engine by "
        f"default), {m['python']}, {m['system']} {m['kernel']} {m['machine']}, "
        f"{m['cpu_count']} CPUs, {m['date']}",
        f"{settings['rounds']} interleaved rounds; each figure: median [min..max] over them.",
        "x baseline: fastwrap's median over the baseline's, turned so that above 1 means "
        "fastwrap does better.",
    ]
    section = ""
    for table, out in zip(tables, data["tables"]):
        if table.section != section:
            section = table.section
            lines += ["", SECTIONS[section]] + [f"  {note}" for note in SECTION_NOTES[section]]
        lines += render_table(table, out["ratios"])
    lines += ["", f"took {data['seconds']:.0f} s"]
    return "\n".join(lines)


# -- the closing lines -----------------------------------------------------------------------

def _headlines(engine: str) -> list[tuple[str, str, str, str, str]]:
    """(what, table key, contender, metric key, unit) of the figures the closing lines quote."""
    return [
        ("a) the largest file, loopback TCP", "a/large/tcp", f"fastwrap {engine} sendfile",
         "gbps", "GB/s"),
        ("b) 4 KiB files over HTTP", "b/small", "fastwrap serve", "requests_per_s", "req/s"),
        ("c) one 4 KiB transmission, loopback TCP", "c/tcp", f"fastwrap {engine}",
         OVERHEAD.key, "us over a bare os.sendfile"),
        ("d) a pipe source, loopback TCP", "d/pipe/tcp", f"fastwrap {engine}", "cpu_s_per_gb",
         "CPU s/GB"),
    ]


def findings(data: dict[str, Any]) -> list[str]:
    """A line for the headline figure of each section: the default engine's, with its ratios."""
    tables = {table["key"]: table for table in data["tables"]}
    lines = []
    for what, key, name, metric, unit in _headlines(data["machine"]["implementation"]):
        table = tables.get(key)
        if table is None:
            continue
        derived = table["derived"].get(metric, {}).get(name)
        contender = next((c for c in table["contenders"] if c["name"] == name), None)
        if derived is not None:
            median = derived["median"]
        elif contender is not None and "summary" in contender:
            median = contender["summary"][metric]["median"]
        else:
            continue  # skipped or failed: its table says why
        ratios = [f"{r['value']:.2f}x {r['baseline']}" for r in table["ratios"]
                  if r["contender"] == name and r["metric"] == metric]
        lines.append(f"  {what}: {name} {fmt(median)} {unit}"
                     + (f" ({', '.join(ratios)})" if ratios else ""))
    if lines:
        lines.insert(0, "Found (medians; Nx: N times better than that baseline):")
    return lines
