"""The figures of `ddnn report`, one PNG each, drawn with matplotlib (Agg: no display) from
the tables of results.json, with the papers' axes and labels, and the papers' own numbers
drawn beside ours wherever they print them (Table I, Table II, the learned-router paper's Table 1).

Ours are the mean over seeds with the spread (standard deviation) as error bars.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ddnn.nn.studies.placement import PAPER as PLACEMENT  # noqa: E402
from ddnn.ops.report import paper  # noqa: E402
from ddnn.ops.report.tables import mean_of, std_of  # noqa: E402

Table = dict[str, Any]


def _series(t: Table, measure: str) -> tuple[list[float | None], list[float]]:
    """A measure's means and spreads down a table's rows."""
    return [mean_of(r[measure]) for r in t["rows"]], [std_of(r[measure]) for r in t["rows"]]


def _line(ax: Axes, x: list[Any], t: Table, measure: str, label: str, **kw: Any) -> None:
    """Ours: the mean of `measure` at each x, the spread over seeds as error bars (rows
    where a seed had no value are left out)."""
    means, stds = _series(t, measure)
    kept = [(a, m, s) for a, m, s in zip(x, means, stds, strict=True) if m is not None]
    if "fmt" not in kw:
        kw["marker"] = "o"
    if kept:
        xs, ms, ss = zip(*kept, strict=True)
        ax.errorbar(xs, ms, yerr=ss, capsize=3, label=label, **kw)


def _ours(t: Table) -> str:
    return f"ours: {t['our_data'].split(' (')[0]}"


def table1(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    schemes = [r["scheme"] for r in t["rows"]]
    x = range(len(schemes))
    for offset, measure, color in ((-0.2, "local", "tab:blue"), (0.2, "cloud", "tab:orange")):
        means, stds = _series(t, measure)
        xs = [i + offset for i in x]
        label = f"{measure.capitalize()} Acc. ({_ours(t)})"
        ax.bar(xs, [m or 0 for m in means], 0.38, yerr=stds, capsize=2, color=color, label=label)
        marks = [r["paper"][f"{measure} %"] for r in t["rows"]]
        paper_label = "paper (MVMC)" if measure == "local" else None
        ax.scatter(xs, marks, marker="_", s=250, color="black", zorder=3, label=paper_label)
    ax.set_xticks(list(x), schemes)
    ax.set_xlabel("Schemes (local-cloud aggregation)")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title("Table I: accuracy of aggregation schemes")


def table2(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    x = [r["threshold"] for r in t["rows"]]
    _line(ax, x, t, "overall_accuracy", f"Overall Acc. ({_ours(t)})", color="tab:blue")
    ts = list(paper.TABLE2)
    ax.plot(
        ts,
        [paper.TABLE2[k][1] for k in ts],
        "s--",
        color="black",
        label="Overall Acc. (paper, MVMC)",
    )
    ax.set_xlabel("Exit Threshold (T) at the local exit")
    ax.set_ylabel("Overall Accuracy (%)")
    right = ax.twinx()
    _line(right, x, t, "exit_fraction", f"Local Exit (%) ({_ours(t)})", color="tab:green")
    right.plot(
        ts, [paper.TABLE2[k][0] for k in ts], "^:", color="gray", label="Local Exit (%) (paper)"
    )
    right.set_ylabel("Local Exit (%)")
    ax.set_title("Table II / Fig. 7: the local exit threshold")


def fig8(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    x = [r["devices"] for r in t["rows"]]
    for measure in ("individual", "local", "cloud", "overall"):
        _line(ax, x, t, measure, measure.capitalize())
    ax.axhline(70, color="gray", ls=":", lw=1)
    ax.axhline(40, color="gray", ls=":", lw=1, label="paper: Individual from under 40 to over 70")
    ax.set_xlabel("Number of End Devices")
    ax.set_ylabel("Classification Accuracy (%)")
    ax.set_title(f"Fig. 8: devices added, worst to best ({_ours(t)})")


def fig9(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    x = [r["filters"] for r in t["rows"]]
    for measure in ("local", "cloud", "overall"):
        _line(ax, x, t, measure, f"{measure.capitalize()} Acc.")
    ax.set_xlabel("Number of End Device Filters")
    ax.set_ylabel("Classification Accuracy (%)")
    ax.set_xticks(x)
    right = ax.twinx()
    _line(right, x, t, "bytes", "Communication (B)", color="tab:gray", ls="--")
    right.set_ylabel("Communication (B)")
    ax.set_title(f"Fig. 9: device filters ({_ours(t)}; paper: overall ~5 above local)")


def fig10(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    rows = [r for r in t["rows"] if r["missing"] != "none"]
    means = [mean_of(r["overall"]) or 0 for r in rows]
    stds = [std_of(r["overall"]) for r in rows]
    labels = [f"{r['missing']}" for r in rows]
    ax.bar(labels, means, yerr=stds, capsize=3, color="tab:blue", label=f"Overall ({_ours(t)})")
    full = mean_of(t["rows"][0]["overall"])
    if full is not None:
        ax.axhline(full, color="tab:green", label="no device missing")
    ax.axhline(paper.FIG10_FLOOR, color="black", ls="--", label="paper: over 95 % (MVMC)")
    ax.set_ylim(max(0, min(means) - 15), 100)
    ax.set_xlabel("Device Missing")
    ax.set_ylabel("Overall Accuracy (%)")
    ax.set_title("Fig. 10: one end device missing")


def tradeoff(t: Table, fig: Figure, sweep: Table) -> None:
    ax = fig.subplots()
    b, _ = _series(sweep, "bytes_measured")
    a, _ = _series(sweep, "overall_accuracy")
    ax.plot(b, a, "o-", color="tab:blue", label=f"DDNN, T from 0 to 1 ({_ours(t)})")
    points = {"DDNN, calibrated T": "*", "raw offload (cloud only)": "X"}
    for row in (r for r in t["rows"] if r["system"] in points):
        marker = points[row["system"]]
        ax.errorbar(
            mean_of(row["bytes"]),
            mean_of(row["accuracy"]),
            yerr=std_of(row["accuracy"]),
            marker=marker,
            ms=12,
            ls="none",
            label=f"{row['system']} (ours)",
        )
    ts = list(paper.TABLE2)
    ax.plot(
        [paper.TABLE2[k][2] for k in ts],
        [paper.TABLE2[k][1] for k in ts],
        "s--",
        color="black",
        label="DDNN (paper, MVMC, Table II)",
    )
    ax.axvline(paper.RAW_BYTES, color="gray", ls=":", label="raw offload (paper): 3072 B")
    ax.set_xscale("log")
    ax.set_xlabel("Communication per device per sample (B, log scale)")
    ax.set_ylabel("Overall Accuracy (%)")
    ax.set_title("Communication against accuracy, and raw offload")


def placement(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    for prefix, style in (("SEM-", "o-"), ("MEM@", "s--")):
        rows = [r for r in t["rows"] if r["model"].startswith(prefix)]
        x = [int(r["model"].removeprefix(prefix)) for r in rows]
        sub = {**t, "rows": rows}
        _line(ax, x, sub, "accuracy", f"{prefix.strip('-@')} overall Acc.", fmt=style)
        _line(ax, x, sub, "edge_exit", f"{prefix.strip('-@')} edge exit (%)", fmt=style, alpha=0.6)
    marks = [
        (int(name[4:]), value, name)
        for group in ("sem", "mem")
        for name, value in PLACEMENT[group]["accuracy"].items()
    ]
    ax.scatter(
        [m[0] for m in marks],
        [m[1] for m in marks],
        color="black",
        marker="s",
        label="paper overall Acc. (" + ", ".join(m[2] for m in marks) + "; CIFAR-10)",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Exit point (block after which the edge exits)")
    ax.set_ylabel("%")
    ax.set_title(f"The exit-placement paper: single- vs multi-exit models ({_ours(t)})")


def router(t: Table, fig: Figure) -> None:
    ax = fig.subplots()
    x = [r["coverage"] for r in t["rows"]]
    _line(ax, x, t, "entropy_accuracy", f"Entropy thresholding ({_ours(t)})")
    _line(ax, x, t, "router_accuracy", f"Learned router ({_ours(t)})")
    ax.set_xlabel("Coverage (share of samples kept at the local exit)")
    ax.set_ylabel("Overall Accuracy (%)")
    right = ax.twinx()
    covs = sorted(paper.SEED002_ROUTER)
    right.plot(
        covs,
        [paper.SEED002_ROUTER[c] for c in covs],
        "s--",
        color="black",
        label="Hybrid router (paper, ImageNet)",
    )
    right.set_ylabel("Paper's hybrid accuracy (%, ImageNet)")
    ax.set_title("The learned-router paper: router against entropy at equal coverage")


def _legend_below(fig: Figure) -> None:
    """One legend for every axis of the figure (two y axes share one), below the plot,
    where it hides no data."""
    handles, labels = [], []
    for ax in fig.axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        fig.axes[0].legend(
            handles,
            labels,
            fontsize="small",
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
        )


# table id -> (file, what draws it)
FIGURES: dict[str, tuple[str, Callable[..., None]]] = {
    "table1": ("table1_aggregation.png", table1),
    "table2": ("table2_threshold.png", table2),
    "fig8": ("fig8_scaling.png", fig8),
    "fig9": ("fig9_filters.png", fig9),
    "fig10": ("fig10_missing.png", fig10),
    "tradeoff": ("tradeoff_bytes.png", tradeoff),
    "placement": ("placement.png", placement),
    "router": ("router.png", router),
}


def draw(tables: dict[str, Table], out: Path) -> dict[str, str]:
    """A PNG in `out` for each table that has a figure; table id -> file name."""
    files = {}
    for id, (name, draw_one) in FIGURES.items():
        if id not in tables or (id == "tradeoff" and "table2" not in tables):
            continue
        fig = plt.figure(figsize=(8, 5), dpi=100)
        try:
            extra = [tables["table2"]] if id == "tradeoff" else []
            draw_one(tables[id], fig, *extra)
            _legend_below(fig)
            fig.savefig(out / name, bbox_inches="tight")
        finally:
            plt.close(fig)
        files[id] = name
    return files
