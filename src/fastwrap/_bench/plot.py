"""--plot: a bar chart of the medians, drawn with matplotlib."""
from __future__ import annotations

import importlib
import statistics
from typing import Any, Optional

from .model import FASTWRAP, REFERENCE


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


#: What each colour of bar stands for, in the order the legend lists them.
KINDS = (("tab:blue", "fastwrap, Cython engine"),
         ("tab:orange", "fastwrap, pure-Python engine"),
         ("grey", "baseline: the standard library's way"),
         ("lightgrey", "reference: a bare os.sendfile"))


def colour(contender: dict[str, Any]) -> str:
    """The colour of *contender*'s bar: its engine's, or its role's."""
    if contender["role"] == FASTWRAP:
        # fastwrap serve runs the default engine: the compiled one where it is built.
        return "tab:orange" if contender["engine"] == "python" else "tab:blue"
    return "lightgrey" if contender["role"] == REFERENCE else "grey"


def figure(data: dict[str, Any]) -> Any:
    """One panel per table: the first metric's medians as bars, min-max as error bars."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    patches: Any = importlib.import_module("matplotlib.patches")
    lines: Any = importlib.import_module("matplotlib.lines")
    tables = [t for t in data["tables"] if any(c["rounds"] for c in t["contenders"])]
    columns = 2
    rows = -(-len(tables) // columns)
    # Each row of panels as tall as its longest list of bars.
    bars = [len([c for c in t["contenders"] if c["rounds"]]) for t in tables]
    heights = [max(bars[i:i + columns]) + 2 for i in range(0, len(tables), columns)]
    inches = 0.3 * sum(heights) + 1.4
    fig, axes = plt.subplots(rows, columns, figsize=(16, inches),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    used = set()
    for axis, table in zip(axes.flat, tables):
        metric = table["metrics"][0]
        shown = [c for c in table["contenders"] if c["rounds"]]
        values = [[r[metric["key"]] for r in c["rounds"]] for c in shown]
        medians = [statistics.median(v) for v in values]
        errors = [[m - min(v) for m, v in zip(medians, values)],
                  [max(v) - m for m, v in zip(medians, values)]]
        colours = [colour(c) for c in shown]
        used.update(colours)
        positions = list(range(len(shown)))
        axis.barh(positions, medians, xerr=errors, color=colours, capsize=2)
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
    rounds = data["settings"]["rounds"]
    # The title, then the legend, in the top inch of the figure, whatever its height.
    fig.suptitle(f"fastwrap {m['fastwrap_version']} bench: {m['python']}, {m['system']} "
                 f"{m['kernel']}, {m['cpu_count']} CPUs, {m['date']}", fontsize=10,
                 y=1 - 0.12 / inches, va="top")
    handles = [patches.Patch(color=c, label=label) for c, label in KINDS if c in used]
    handles.append(lines.Line2D([], [], color="black", marker="|", markersize=8,
                                label=f"min-max over {rounds} rounds (the bar: their median)"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.42 / inches))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / inches))
    return fig


def plot(data: dict[str, Any], path: str) -> None:
    """Draw :func:`figure` into the PNG file *path*."""
    fig = figure(data)
    fig.savefig(path, dpi=110)
    importlib.import_module("matplotlib.pyplot").close(fig)
