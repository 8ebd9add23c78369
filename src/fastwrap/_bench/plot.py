"""--plot: a bar chart of the medians, drawn with matplotlib."""
from __future__ import annotations

import importlib
import statistics
from typing import Any, Optional

from .model import FASTWRAP


# -- the plot ------------------------------------------------------------------------------------

def matplotlib_problem() -> Optional[str]:
    """Why --plot cannot work here, or None."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        return f"--plot needs matplotlib ({exc}): pip install matplotlib"
    return None


def _plot_label(contender: dict[str, Any]) -> str:
    paths = contender["paths_taken"]
    if paths and contender["path"] is None:
        return f"{contender['name']} [{', '.join(sorted(paths))}]"
    return str(contender["name"])


def plot(data: dict[str, Any], path: str) -> None:
    """One panel per table: the first metric's medians as bars, min-max as error bars."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    tables = [t for t in data["tables"] if any(c["rounds"] for c in t["contenders"])]
    columns = 2
    rows = -(-len(tables) // columns)
    # Each row of panels as tall as its longest list of bars.
    bars = [len([c for c in t["contenders"] if c["rounds"]]) for t in tables]
    heights = [max(bars[i:i + columns]) + 2 for i in range(0, len(tables), columns)]
    figure, axes = plt.subplots(rows, columns, figsize=(16, 0.3 * sum(heights) + 1),
                                squeeze=False, gridspec_kw={"height_ratios": heights})
    colours = {"cython": "tab:blue", "python": "tab:orange"}
    for axis, table in zip(axes.flat, tables):
        metric = table["metrics"][0]
        shown = [c for c in table["contenders"] if c["rounds"]]
        values = [[r[metric["key"]] for r in c["rounds"]] for c in shown]
        medians = [statistics.median(v) for v in values]
        errors = [[m - min(v) for m, v in zip(medians, values)],
                  [max(v) - m for m, v in zip(medians, values)]]
        colour = [colours.get(c["engine"] or "", "tab:blue" if c["role"] == FASTWRAP else "grey")
                  for c in shown]
        positions = list(range(len(shown)))
        axis.barh(positions, medians, xerr=errors, color=colour, capsize=2)
        axis.set_yticks(positions)
        axis.set_yticklabels([_plot_label(c) for c in shown], fontsize=7)
        axis.invert_yaxis()
        axis.set_xlabel(metric["label"] + (" (higher is better)" if metric["higher_is_better"]
                                           else " (lower is better)"), fontsize=8)
        axis.set_title(f"{table['section']}) {table['title']}", fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
    for axis in list(axes.flat)[len(tables):]:
        axis.set_visible(False)
    m = data["machine"]
    figure.suptitle(f"fastwrap {m['fastwrap_version']} bench: {m['python']}, {m['system']} "
                    f"{m['kernel']}, {m['cpu_count']} CPUs, {m['date']} "
                    f"(median, min-max over {data['settings']['rounds']} rounds)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path, dpi=110)
    plt.close(figure)
