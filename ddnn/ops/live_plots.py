"""PNG figures of a live run (`ddnn demo --plot DIR`, `ddnn faults --plot DIR`).

The tables give a tier's p50 and p99 and a stretch's accuracy; the figures show what those
numbers hide: the shape of a tier's latency (a second mode of samples that waited out a
deadline), and when a scenario's accuracy dipped or its latency rose, how long after the
fault and for how long.

The functions take plain data (decisions, time-line points, fault events), write one PNG
each and return its path. They draw on `matplotlib.figure.Figure` with no pyplot: no global
backend to switch, nothing shown on a screen, safe in a process without a display. Only
ddnn.ops imports this module (the torch-free services never draw).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ddnn.live.wire import Decision
from ddnn.ops.stats import percentiles

TIERS = ("local", "edge", "cloud")
COLORS = {"local": "tab:blue", "edge": "tab:orange", "cloud": "tab:green"}
MAX_BINS = 40  # time bins on a scenario's time line: enough to see a dip, few enough to fill
MIN_BIN_S = 0.5
MAX_LABELS = 2  # fault labels written out per group of events at (nearly) the same time


class Point(NamedTuple):
    """One sample's decision on a faults time line."""

    t: float  # seconds from the scenario's start to the decision's arrival at the driver
    latency_ms: float | None
    correct: bool | None  # None: undecided
    offline_correct: bool | None  # the offline reference, same devices; None: no counterpart


class Event(NamedTuple):
    """A fault done to the deployment: when (seconds from the scenario's start) and what."""

    t: float
    label: str


def tier_latencies(decisions: Iterable[Decision]) -> dict[str, list[float]]:
    """The latencies of decided samples per exit tier, counted as the demo's summary counts
    them (`fleet.summarize`), so the marked p50/p99 equal the table's."""
    found: dict[str, list[float]] = {}
    for d in decisions:
        if d.decided and d.exit is not None and d.latency_ms:
            found.setdefault(d.exit, []).append(d.latency_ms)
    return {t: found[t] for t in TIERS if t in found}


def latency_histograms(decisions: Iterable[Decision], path: Path, title: str = "") -> Path:
    """One panel per exit tier that decided samples: a histogram of their latency (ms) with
    its p50 and p99 marked. Writes `path` (PNG); returns it."""
    tiers = tier_latencies(decisions)
    fig = Figure(figsize=(7.0, 2.4 * max(1, len(tiers))), layout="constrained")
    axes = fig.subplots(max(1, len(tiers)), 1, squeeze=False)[:, 0]
    if not tiers:
        axes[0].text(0.5, 0.5, "no decided samples", ha="center", va="center")
    for ax, (tier, values) in zip(axes, tiers.items(), strict=False):
        _histogram(ax, tier, values)
    fig.suptitle(title or "latency per exit tier", fontsize=10)
    return _save(fig, path)


def _histogram(ax: Axes, tier: str, values: list[float]) -> None:
    """A tier's latency histogram, its p50 and p99 as labelled vertical lines."""
    ax.hist(values, bins=min(50, max(5, len(values) // 5)), color=COLORS[tier], alpha=0.8)
    marks = percentiles(values)
    for (name, value), style in zip(marks.items(), ("--", ":"), strict=True):
        ax.axvline(value, color="black", linestyle=style, label=f"{name} {value:g} ms")
    ax.set_title(f"{tier} exit ({len(values)} samples)", fontsize=10)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)


def fault_timeline(
    points: Sequence[Point], events: Sequence[Event], path: Path, title: str
) -> Path:
    """A scenario over time: per time bin, live accuracy beside the offline reference's on
    the same samples with the same devices present, and the share left undecided (top);
    each decision's latency and the bin's p50 (bottom, log scale); the faults as labelled
    vertical lines. Writes `path` (PNG); returns it."""
    fig = Figure(figsize=(9.0, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    span = max([p.t for p in points] + [e.t for e in events] + [1.0])
    edges = np.arange(0.0, span + _bin_width(span), _bin_width(span))
    _accuracy_panel(top, points, edges)
    _latency_panel(bottom, points, edges)
    _mark_events([top, bottom], events, span)
    bottom.set_xlabel("seconds since the scenario began (decision arrival)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _bin_width(span: float) -> float:
    return max(MIN_BIN_S, span / MAX_BINS)


def _per_bin(points: Sequence[Point], edges: np.ndarray) -> list[list[Point]]:
    """`points` sorted into the bins between `edges` (the last bin takes the end)."""
    bins: list[list[Point]] = [[] for _ in range(len(edges) - 1)]
    for p in points:
        index = min(int(np.searchsorted(edges, p.t, side="right")) - 1, len(bins) - 1)
        bins[max(0, index)].append(p)
    return bins


def _share(flags: Iterable[bool | None]) -> float:
    """Percent true among the flags that are not None (NaN when none: a gap in the line)."""
    known = [f for f in flags if f is not None]
    return 100.0 * sum(known) / len(known) if known else float("nan")


def _accuracy_panel(ax: Axes, points: Sequence[Point], edges: np.ndarray) -> None:
    centers = (edges[:-1] + edges[1:]) / 2
    bins = _per_bin(points, edges)
    live = [_share(p.correct for p in b) for b in bins]
    offline = [_share(p.offline_correct for p in b) for b in bins]
    undecided = [_share(p.correct is None for p in b) if b else float("nan") for b in bins]
    # the reference underneath, wide: where live equals it (parity), it shows as a halo
    ax.plot(
        centers,
        offline,
        "-",
        color="tab:gray",
        linewidth=5,
        alpha=0.4,
        label="offline, same devices",
    )
    ax.plot(centers, live, "o-", color="tab:blue", markersize=4, label="live accuracy")
    ax.plot(centers, undecided, "s:", color="tab:red", markersize=3, label="undecided")
    ax.set_ylim(-5, 105)
    ax.set_ylabel("% of samples per bin")
    ax.legend(fontsize=8, loc="lower left")


def _latency_panel(ax: Axes, points: Sequence[Point], edges: np.ndarray) -> None:
    timed = [p for p in points if p.latency_ms]
    ax.scatter([p.t for p in timed], [p.latency_ms for p in timed], s=4, alpha=0.3, c="tab:blue")
    centers = (edges[:-1] + edges[1:]) / 2
    bins = _per_bin(timed, edges)
    p50 = [float(np.median([p.latency_ms for p in b])) if b else float("nan") for b in bins]
    ax.plot(centers, p50, "-", color="black", label="p50 per bin")
    if timed:
        ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8, loc="upper left")


def _mark_events(axes: list[Axes], events: Sequence[Event], span: float) -> None:
    """A vertical line per event on every panel; one label per group of events closer than
    a bin (eight services killed at once read as one line, not eight overprinted)."""
    for group in _grouped(sorted(events), _bin_width(span) / 2):
        for ax in axes:
            for e in group:
                ax.axvline(e.t, color="tab:red", linewidth=0.8, alpha=0.6)
        names = [e.label for e in group[:MAX_LABELS]]
        more = len(group) - len(names)
        text = ", ".join(names) + (f" (+{more})" if more else "")
        axes[0].annotate(
            text,
            (group[0].t, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="left" if group[0].t < span / 2 else "right",  # into the plot, not off it
            fontsize=7,
            color="tab:red",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
        )


def _grouped(events: Sequence[Event], gap: float) -> list[list[Event]]:
    """`events` (sorted by time) in runs whose neighbours are at most `gap` apart."""
    groups: list[list[Event]] = []
    for e in events:
        if groups and e.t - groups[-1][-1].t <= gap:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
