"""The figures of `ddnn demo --plot` and `ddnn faults --plot`, drawn from made-up data (the
live tests draw them from real runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddnn.live.wire import Decision
from ddnn.ops.fleet import summarize
from ddnn.ops.live_plots import Event, Point, fault_timeline, latency_histograms, tier_latencies

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000, path  # a drawn figure, not a stub


def decisions(n: int = 200) -> list[Decision]:
    rng = np.random.default_rng(0)
    made = []
    for k in range(n):
        tier = ("local", "local", "edge", "cloud")[k % 4]
        latency = float(rng.gamma(2.0, {"local": 5.0, "edge": 20.0, "cloud": 60.0}[tier]))
        made.append(
            Decision(sample=k, decided=True, class_index=k % 3, exit=tier, latency_ms=latency)
        )
    made.append(Decision(sample=n, decided=False, reason="no device answered"))
    return made


def test_the_latency_histograms_mark_the_percentiles_the_summary_reports(tmp_path):
    made = decisions()
    path = latency_histograms(made, tmp_path / "sub" / "demo.png", "test")
    assert path == tmp_path / "sub" / "demo.png"
    assert_png(path)
    tiers = tier_latencies(made)
    assert list(tiers) == ["local", "edge", "cloud"] and len(tiers["local"]) == 100
    summary = summarize({d.sample: d for d in made}, np.zeros(10, dtype=int), len(made), 1.0)
    assert set(summary["latency_ms"]) == set(tiers)
    assert_png(latency_histograms([], tmp_path / "none.png"))  # nothing decided: still drawn


def test_a_fault_timeline_with_its_events(tmp_path):
    rng = np.random.default_rng(1)
    points = [
        Point(t, float(rng.gamma(2.0, 400.0 if 2 < t < 3 else 5.0)), ok, ok)
        for t in np.linspace(0.0, 6.0, 150)
        for ok in [bool(rng.random() < (0.6 if 2 < t < 3 else 0.9))]
    ]
    points.append(Point(2.5, None, None, None))  # undecided
    events = [Event(2.0, "kill device-0"), Event(2.01, "restart device-0"), Event(4.0, "x")]
    events += [Event(5.0 + i / 100, f"kill device-{i}") for i in range(8)]  # one label
    path = fault_timeline(points, events, tmp_path / "faults-x.png", "x")
    assert_png(path)
    assert_png(fault_timeline([], [], tmp_path / "empty.png", "nothing decided"))
