"""`ddnn results`: the README's results table, over several training seeds.

One training run is one trajectory: float results differ from CPU to CPU (and from seed to
seed), so a figure that holds for one run may not hold on the next machine. This command
runs the real commands a user would (`ddnn train --seed S`, `ddnn eval --each-missing`,
`ddnn baseline --seed S`) once per seed, each in its own process, and reports every measure
per seed with its mean and spread, and whether each seed meets the paper-shaped bars.

The bars (issue 8, after the paper's Table II and Fig. 10):
- overall accuracy at the picked threshold within 1 point of the cloud exit alone;
- at least 50 % of the samples exit locally;
- at least 40x fewer bytes per device per sample than raw offload;
- any single device missing costs at most 5 points of overall accuracy;
- the cloud exit beats the mean individual device by at least 20 points.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ddnn.core.errors import DDNNError

BARS: dict[str, str] = {
    "overall_within_1_of_cloud": "overall >= cloud - 1",
    "local_exits_at_least_50": "local exit % >= 50",
    "bytes_40x_below_raw": "raw / measured bytes >= 40",
    "single_missing_at_most_5": "worst single-device drop <= 5 points",
    "cloud_20_above_individual": "cloud >= mean individual + 20",
}


def run_json(args: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run `python -m ddnn ARGS --json` in its own process; its progress goes to our stderr."""
    command = [sys.executable, "-m", "ddnn", *args, "--json"]
    log(" ".join(["ddnn", *args]))
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise DDNNError(f"`ddnn {' '.join(args)}` failed with status {done.returncode}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise DDNNError(f"`ddnn {' '.join(args)} --json` printed no JSON: {e}") from None


def seed_row(train: dict, report: dict, baseline: dict | None) -> dict[str, Any]:
    """The measures of one seed's run, flat, from the three commands' JSON documents."""
    acc, b = report["accuracy"], report["bytes_per_device"]
    drops = {
        row["missing"]: round(acc["overall"] - row["overall"], 2) for row in report["each_missing"]
    }
    worst = max(drops, key=lambda d: drops[d])
    row: dict[str, Any] = {
        "seed": train["seed"],
        "train_seconds": train["train_seconds"],
        "local": acc.get("local"),
        "cloud": acc.get("cloud"),
        "overall": acc["overall"],
        "local_exit": report["exit_fraction"].get("local"),
        "threshold": report["threshold"].get("local"),
        "bytes_measured": b["measured"],
        "bytes_formula": b["formula"],
        "raw_over_measured": b["raw_over_measured"],
        "worst_missing_drop": drops[worst],
        "worst_missing_device": worst,
        "missing_drops": [drops[d] for d in sorted(drops)],
    }
    if baseline is not None:
        row["individual_min"] = min(baseline["individual"])
        row["individual_max"] = max(baseline["individual"])
        row["individual_mean"] = baseline["mean"]
    row["bars"] = check_bars(row)
    return row


def check_bars(row: dict[str, Any]) -> dict[str, bool]:
    bars = {
        "overall_within_1_of_cloud": row["cloud"] is None or row["overall"] >= row["cloud"] - 1,
        "local_exits_at_least_50": (row["local_exit"] or 0) >= 50,
        "bytes_40x_below_raw": row["raw_over_measured"] >= 40,
        "single_missing_at_most_5": row["worst_missing_drop"] <= 5,
    }
    if "individual_mean" in row and row["cloud"] is not None:
        bars["cloud_20_above_individual"] = row["cloud"] >= row["individual_mean"] + 20
    return bars


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, min and max of every numeric measure over the seeds."""
    out: dict[str, dict[str, float]] = {}
    for key, first in rows[0].items():
        if key in ("seed", "worst_missing_device") or not isinstance(first, int | float):
            continue
        values = [float(r[key]) for r in rows if r[key] is not None]
        if not values:
            continue
        out[key] = {
            "mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }
    return out


def seed_results(
    seeds: Sequence[int],
    data: str,
    overrides: Sequence[str],
    workdir: Path,
    baseline: bool,
    log: Callable[[str], None],
    held_out: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate (and train the individual baselines) once per seed, in `workdir`.
    Each model is evaluated on the test part of `data`, or on all of `held_out` (data the
    model never saw, as large as wanted: the bars are then judged with less noise)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sets = [arg for item in overrides for arg in ("--set", item)]
    rows = []
    for seed in seeds:
        model = workdir / f"model-seed{seed}.pt"
        common = ["--data", data, "--seed", str(seed), *sets]
        train = run_json(["train", *common, "--out", str(model)], log)
        train["seed"] = seed
        evaluation = ["--data", held_out, "--part", "all"] if held_out else []
        report = run_json(["eval", "--model", str(model), "--each-missing", *evaluation], log)
        individual = run_json(["baseline", *common], log) if baseline else None
        rows.append(seed_row(train, report, individual))
        log(f"seed {seed}: {json.dumps({k: v for k, v in rows[-1].items() if k != 'bars'})}")
    return {
        "data": data,
        "evaluated_on": f"{held_out} (all)" if held_out else f"{data} (test part)",
        "overrides": list(overrides),
        "seeds": list(seeds),
        "rows": rows,
        "summary": over_seeds(rows),
        "bars": BARS,
        "all_bars_met": all(all(r["bars"].values()) for r in rows),
    }
