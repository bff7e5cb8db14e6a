"""Offline evaluation: accuracy per exit, the exit cascade, communication, sweeps, calibration.

Accuracy measures follow the paper (Section III-F): an exit's accuracy is the accuracy when
every sample exits there; overall accuracy is the cascade's under the thresholds.
Communication per device per sample is reported two ways: the paper's formula (1),
c = 4|C| + (1 - l) f o / 8, and measured as the lengths of the payloads a device actually
sends (`ddnn.core.payloads`), next to raw offload of the input (C*H*W bytes, one byte per pixel).
Devices listed as missing send nothing and are not counted in the per-device average.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddnn.core.config import EXIT_ORDER, DDNNConfig
from ddnn.core.errors import DDNNError
from ddnn.core.exits import (
    Decisions,
    ExitInputs,
    ExitPoint,
    cascade,
    decide,
    exit_points,
    judge,
    step,
)
from ddnn.core.fusion import score_fusions
from ddnn.core.payloads import VALUE_BITS, pack_features, pack_scores
from ddnn.core.routing import routers_from_state
from ddnn.data import MultiViewData, check_fits, load_spec, split, trained_on
from ddnn.nn.checkpoint import load_model
from ddnn.nn.export import load_exported_model
from ddnn.nn.model import DDNN


@dataclass
class ExitOutputs:
    """A model's outputs on a data set, under one set of present devices."""

    inputs: dict[str, ExitInputs]  # exit name -> what the exit decides on (ddnn.core.exits)
    labels: np.ndarray  # (N,)
    present: np.ndarray  # (N, D) bool
    score_bytes: int  # one device's class-score payload (0 without a local exit)
    feature_bytes: int  # one device's feature-map payload when a sample is escalated
    feature_bits: int  # f * o * bits per activation, for formula (1)
    raw_bytes: int  # one device's raw input, one byte per pixel value
    n_classes: int

    @property
    def probs(self) -> dict[str, np.ndarray]:
        """Exit name -> (N, |C|) class probabilities."""
        return {name: inputs.probs for name, inputs in self.inputs.items()}


def presence_mask(n: int, n_devices: int, missing: Sequence[int] = ()) -> np.ndarray:
    for d in missing:
        if not 0 <= d < n_devices:
            raise ValueError(f"device {d} does not exist (devices are 0..{n_devices - 1})")
    if len(set(missing)) >= n_devices:
        raise ValueError("at least one device must be present")
    present = np.ones((n, n_devices), dtype=bool)
    present[:, list(missing)] = False
    return present


@torch.no_grad()
def run_model(
    model: DDNN, data: MultiViewData, present: np.ndarray | None = None, batch: int = 512
) -> ExitOutputs:
    """Run `model` on `data` with the devices `present` (N, D) (default: all): what each exit
    decides on. The local and edge exits fuse their inputs' class scores in NumPy as the
    live aggregator does (ddnn.core.fusion), with the model's fusion weights."""
    model.eval()
    if present is None:
        present = presence_mask(len(data), data.n_views)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(data), batch):
        out = model(
            torch.from_numpy(data.x[start : start + batch]),
            torch.from_numpy(present[start : start + batch]),
        )
        for name, value in (
            ("device_scores", out.device_scores),
            ("edge_scores", out.edge_scores),
            ("edge_present", out.edge_present),
            ("cloud", out.logits.get("cloud")),
            *((tap, out.logits[tap]) for tap in model.cfg.tap_exits),
        ):
            if value is not None:
                parts.setdefault(name, []).append(value.numpy())
    arrays = {name: np.concatenate(values) for name, values in parts.items()}
    fusions = score_fusions(model.cfg, numpy_state(model))
    inputs = {}
    if "local" in fusions:
        inputs["local"] = ExitInputs(arrays["device_scores"], present, fusions["local"])
    if "edge" in fusions:
        inputs["edge"] = ExitInputs(arrays["edge_scores"], arrays["edge_present"], fusions["edge"])
    if "cloud" in arrays:
        inputs["cloud"] = ExitInputs(arrays["cloud"])
    for tap in model.cfg.tap_exits:  # seed 001's multi-exit model: one edge's own scores
        inputs[tap] = ExitInputs(arrays[tap])
    fmt = model.cfg.device_feature_format  # how a feature map travels (ddnn.core.payloads)
    features = np.ones(model.device_feature_shape, dtype=np.float32)
    n_classes = len(data.classes)
    return ExitOutputs(
        inputs=inputs,
        labels=data.labels,
        present=present,
        score_bytes=len(pack_scores(np.zeros(n_classes))) if model.local is not None else 0,
        feature_bytes=len(pack_features(features, fmt)),
        feature_bits=features.size * VALUE_BITS[fmt],
        raw_bytes=int(np.prod(data.view_shape)),
        n_classes=n_classes,
    )


def numpy_state(model: DDNN) -> dict[str, np.ndarray]:
    """The model's weights by state-dict name, as NumPy arrays (what an export holds)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def model_exit_points(model: DDNN, cfg: DDNNConfig) -> list[ExitPoint]:
    """The exits of `model` under `cfg`: each one's policy and threshold, with the model's
    own routers for the exits that use one."""
    return exit_points(cfg, model.exits, routers_from_state(cfg, numpy_state(model)))


def with_thresholds(points: Sequence[ExitPoint], thresholds: dict[str, float]) -> list[ExitPoint]:
    return [replace(p, threshold=thresholds.get(p.name, p.threshold)) for p in points]


def _pct(x: float) -> float:
    return round(100.0 * float(x), 2)


def accuracy_percent(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The share of `predictions` equal to `labels`, in % rounded to two decimals."""
    return _pct((np.asarray(predictions) == labels).mean())


def evaluate(
    outputs: ExitOutputs, points: Sequence[ExitPoint], decisions: Decisions | None = None
) -> dict:
    """The report of `ddnn eval`: accuracy and exit fractions per tier, bytes per device.
    `decisions`: the cascade's on `outputs` under `points`, when already computed.

    With drop thresholds (seed 001), `exit_fraction` counts the samples answered at each
    exit, `abstained` those dropped there, `accuracy.overall` the share of all samples
    answered right, and `coverage` the share answered and the accuracy on those."""
    names = [p.name for p in points]
    if decisions is None:
        decisions = cascade(points, outputs.inputs)
    answered = ~decisions.abstained
    right = (decisions.predictions == outputs.labels) & answered
    accuracy: dict[str, float | None] = dict.fromkeys(EXIT_ORDER)
    exit_fraction: dict[str, float | None] = dict.fromkeys(EXIT_ORDER)
    abstained: dict[str, float] = {}
    for i, name in enumerate(names):
        accuracy[name] = accuracy_percent(outputs.probs[name].argmax(1), outputs.labels)
        here = decisions.exit_index == i
        exit_fraction[name] = _pct((here & answered).mean())
        if points[i].drop is not None:
            abstained[name] = _pct((here & decisions.abstained).mean())
    accuracy["overall"] = _pct(right.mean())
    return {
        "samples": int(len(outputs.labels)),
        "accuracy": accuracy,
        "exit_fraction": exit_fraction,
        "abstained": abstained,
        "coverage": {
            "answered": _pct(answered.mean()),
            "accuracy": _pct(right.sum() / answered.sum()) if answered.any() else None,
        },
        "bytes_per_device": communication(outputs, decisions.exit_index, names),
        "threshold": {p.name: p.threshold for p in points[:-1]},
        "drop": {p.name: p.drop for p in points[:-1] if p.drop is not None},
        "policy": {p.name: p.policy.name for p in points[:-1]},
        "present_devices": [int(d) for d in np.flatnonzero(outputs.present.any(axis=0))],
    }


def write_decisions(
    path: Path | str,
    outputs: ExitOutputs,
    points: Sequence[ExitPoint],
    decisions: Decisions | None = None,
) -> None:
    """One JSON line per sample (its index in the evaluated part, the class decided, the
    exit that decided, the bytes each device sent): what the live system's decision
    messages are compared with. `decisions`: the cascade's, when already computed."""
    d = cascade(points, outputs.inputs) if decisions is None else decisions
    names = [p.name for p in points]
    sent = device_bytes(outputs, d.exit_index, names)
    with Path(path).open("w") as f:
        for i, (k, e) in enumerate(zip(d.predictions, d.exit_index, strict=True)):
            line = {
                "sample": i,
                "class_index": None if d.abstained[i] else int(k),
                "exit": names[e],
                "abstained": bool(d.abstained[i]),
                "device_bytes": int(sent[i]),
            }
            f.write(json.dumps(line) + "\n")


def _escalated(exit_index: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Samples whose device feature maps go up: all of them without a local exit."""
    return exit_index > 0 if names[0] == "local" else np.ones(len(exit_index), dtype=bool)


def _bytes_sent(outputs: ExitOutputs, escalated: np.ndarray) -> np.ndarray:
    return outputs.score_bytes + escalated * outputs.feature_bytes


def device_bytes(outputs: ExitOutputs, exit_index: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Payload bytes each present device sends for each sample: (N,)."""
    return _bytes_sent(outputs, _escalated(exit_index, names))


def communication(outputs: ExitOutputs, exit_index: np.ndarray, names: Sequence[str]) -> dict:
    """Bytes per device per sample: formula (1), measured payload lengths, raw offload."""
    has_local = names[0] == "local"
    escalated = _escalated(exit_index, names)
    local_fraction = 1.0 - float(escalated.mean())
    formula = (4 * outputs.n_classes if has_local else 0) + (
        1 - local_fraction
    ) * outputs.feature_bits / 8
    per_sample = _bytes_sent(outputs, escalated)
    n_present = outputs.present.sum(axis=1)
    measured = float((per_sample * n_present).sum() / n_present.sum())
    return {
        "formula": round(formula, 2),
        "measured": round(measured, 2),
        "raw": outputs.raw_bytes,
        "raw_over_measured": round(outputs.raw_bytes / measured, 2) if measured else None,
    }


def sweep(
    outputs: ExitOutputs,
    points: Sequence[ExitPoint],
    grid: Sequence[float] = tuple(round(0.1 * i, 1) for i in range(11)),
) -> list[dict]:
    """Table II: vary the first exit's threshold over `grid`, others fixed."""
    rows = []
    for t in grid:
        pts = with_thresholds(points, {points[0].name: t})
        report = evaluate(outputs, pts)
        rows.append(
            {
                "threshold": t,
                "exit_fraction": report["exit_fraction"][points[0].name],
                "overall_accuracy": report["accuracy"]["overall"],
                "bytes_formula": report["bytes_per_device"]["formula"],
                "bytes_measured": report["bytes_per_device"]["measured"],
            }
        )
    return rows


RULES = ("best", "max_loss")


def pick_thresholds(
    outputs: ExitOutputs,
    points: Sequence[ExitPoint],
    rule: str = "max_loss",
    max_loss: float = 1.0,
    confidence: float = 1.5,
    grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 101)),
    search: Sequence[str] | None = None,
) -> dict[str, float]:
    """Search thresholds of the exits named in `search` (default: all but the last) on
    `grid`; the others keep theirs.

    rule "best": the highest overall accuracy. rule "max_loss": the least communication (most
    samples leaving at the lowest exits) whose accuracy loss against the last exit alone,
    plus `confidence` standard errors of that loss, stays within `max_loss` points. The
    standard error is that of the per-sample paired difference (last exit right, cascade
    wrong, or the reverse), so a threshold is taken only where the held-out data is evidence
    for it: the cheapest setting that merely happens to fit on a few hundred validation
    samples sits at the edge of the region and lost 1.5-2 points on test. Ties go to cheaper
    settings. Meant for held-out validation data, never the test set.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be {' or '.join(RULES)}, got {rule!r}")
    if len(points) < 2:
        return {}
    searched = list(search) if search is not None else [p.name for p in points[:-1]]
    last_right = outputs.probs[points[-1].name].argmax(1) == outputs.labels
    # each exit's statistic once (a router's is an MLP), then only thresholds vary
    base = [step(p, outputs.inputs[p.name], i == len(points) - 1) for i, p in enumerate(points)]
    candidates = []
    for combo in product(grid, repeat=len(searched)):
        chosen = dict(zip(searched, combo, strict=True))
        steps = [
            judge(replace(p, threshold=chosen[p.name]), s.probs, s.statistic, False)
            if p.name in chosen
            else s
            for p, s in zip(points, base, strict=True)
        ]
        d = decide(steps)
        right = (d.predictions == outputs.labels) & ~d.abstained  # abstaining is not right
        diff = last_right.astype(np.float64) - right
        bound = 100.0 * (diff.mean() + confidence * diff.std() / np.sqrt(len(diff)))
        # cost: how many samples go past each exit, lowest exit first (device bytes first)
        cost = tuple(float((d.exit_index > i).mean()) for i in range(len(searched)))
        candidates.append((100.0 * right.mean(), bound, cost, combo))
    if rule == "best":
        best = max(c[0] for c in candidates)
        eligible = [c for c in candidates if c[0] >= best - 1e-9]
    else:
        eligible = [c for c in candidates if c[1] <= max_loss + 1e-9]
    _, _, _, combo = min(eligible, key=lambda c: (c[2], -c[0]))
    return {name: round(float(t), 4) for name, t in zip(searched, combo, strict=True)}


def thresholds_for_fractions(
    outputs: ExitOutputs, points: Sequence[ExitPoint], fractions: dict[str, float]
) -> dict[str, float]:
    """Thresholds at which about `fractions[name]` of all samples exit at each named exit.

    Exits are handled lowest first, each over the samples that reach it under the thresholds
    already chosen; the threshold lies midway between the statistic of the last sample that
    exits and that of the first that does not.
    """
    chosen: dict[str, float] = {}
    n = len(outputs.labels)
    reaching = np.ones(n, dtype=bool)
    for point in points[:-1]:
        inputs = outputs.inputs[point.name]
        statistic = point.policy.statistic(inputs)
        if point.name in fractions:
            f = fractions[point.name]
            k = int(round(f * n))
            if not 0.0 <= f <= 1.0 or k > reaching.sum():
                raise ValueError(
                    f"cannot exit {f:.0%} of the samples at {point.name}: only "
                    f"{reaching.mean():.0%} reach it"
                )
            chosen[point.name] = _threshold_for_count(
                statistic[reaching], k, point.policy.confident_below
            )
            point = replace(point, threshold=chosen[point.name])
        judged = judge(point, inputs.probs, statistic, last=False)
        reaching &= ~judged.exits
        if judged.abstains is not None:  # dropped samples go no further either
            reaching &= ~judged.abstains
    return chosen


def _threshold_for_count(stat: np.ndarray, k: int, confident_below: bool) -> float:
    stat = np.sort(stat) if confident_below else np.sort(stat)[::-1]
    if k == 0:
        return float(stat[0] + (-1e-6 if confident_below else 1e-6))
    if k == len(stat):
        return float(stat[-1])
    return float((stat[k - 1] + stat[k]) / 2)


def local_fraction_for_budget(outputs: ExitOutputs, budget: float) -> float:
    """The local exit fraction l at which measured bytes per device meet `budget`:
    score_bytes + (1 - l) * feature_bytes <= budget."""
    if budget < outputs.score_bytes:
        raise ValueError(
            f"a budget of {budget} B is below the {outputs.score_bytes} B of scores every "
            "sample costs"
        )
    return float(np.clip(1.0 - (budget - outputs.score_bytes) / outputs.feature_bytes, 0, 1))


def accuracy_by_device_count(
    model: DDNN, data: MultiViewData, points: Sequence[ExitPoint], order: Sequence[int]
) -> list[dict]:
    """Fig. 8: devices added one at a time in `order`; accuracy per exit and overall."""
    rows = []
    for k in range(1, len(order) + 1):
        missing = [d for d in range(data.n_views) if d not in order[:k]]
        rows.append({"devices": list(order[:k]), **_accuracy_without(model, data, points, missing)})
    return rows


def accuracy_each_missing(
    model: DDNN, data: MultiViewData, points: Sequence[ExitPoint]
) -> list[dict]:
    """Fig. 10: each single device absent in turn; accuracy per exit and overall."""
    return [
        {"missing": d, **_accuracy_without(model, data, points, [d])} for d in range(data.n_views)
    ]


def _accuracy_without(
    model: DDNN, data: MultiViewData, points: Sequence[ExitPoint], missing: Sequence[int]
) -> dict[str, float | None]:
    present = presence_mask(len(data), data.n_views, missing)
    return evaluate(run_model(model, data, present), points)["accuracy"]


@torch.no_grad()
def device_ranking(model: DDNN, data: MultiViewData, batch: int = 512) -> list[int]:
    """Devices from worst to best by the accuracy of their own class scores alone (in order
    of device number without a local exit)."""
    if model.local is None:
        return list(range(data.n_views))
    model.eval()
    correct = np.zeros(data.n_views, dtype=np.int64)
    for start in range(0, len(data), batch):
        scores, _ = model.devices(torch.from_numpy(data.x[start : start + batch]))
        labels = data.labels[start : start + batch, None]
        correct += (scores.argmax(-1).numpy() == labels).sum(axis=0)
    return [int(d) for d in np.argsort(correct, kind="stable")]


DataLoader = Callable[[str, str], MultiViewData]


def load_for_eval(
    model_path: Path | str,
    data: str | None = None,
    grid: str | None = None,
    part: str = "test",
    loader: DataLoader = load_spec,
) -> tuple[DDNN, DDNNConfig, dict[str, Any], MultiViewData]:
    """A model (a model file or a `ddnn export` directory), its config and metadata, and
    the part of a data set to evaluate it on: `data` (a SPEC, default: the data it was
    trained on, with its grid), split as in training; part "all" for the whole set.
    `loader(spec, grid)` loads the data (default `ddnn.data.load_spec`)."""
    model_path = Path(model_path)
    if model_path.is_dir():
        model, cfg, manifest = load_exported_model(model_path)
        meta = dict(manifest.meta)
    else:
        model, cfg, meta = load_model(model_path)
    own_data, own_grid = trained_on(meta)
    dataset = loader(data or own_data, grid or own_grid)
    check_fits(dataset, cfg.model)
    if part == "all":
        return model, cfg, meta, dataset
    chosen = getattr(split(dataset, cfg.train), part, None)
    if chosen is None:
        raise DDNNError(f"the model was trained without a {part} split")
    return model, cfg, meta, chosen
