"""Offline evaluation: accuracy per exit, the exit cascade, communication, sweeps.

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
    exit_points,
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
    model: DDNN,
    data: MultiViewData,
    present: np.ndarray | None = None,
    batch: int = 512,
    robust: bool | None = None,
) -> ExitOutputs:
    """Run `model` on `data` with the devices `present` (N, D) (default: all): what each exit
    decides on. The local and edge exits fuse their inputs' class scores in NumPy as the
    live aggregator does (ddnn.core.fusion), with the model's fusion weights; `robust`:
    whether the local exit's fusion is trimmed (None: as the config says)."""
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
    fusions = score_fusions(model.cfg, numpy_state(model), robust)
    inputs = {}
    if "local" in fusions:
        inputs["local"] = ExitInputs(arrays["device_scores"], present, fusions["local"])
    if "edge" in fusions:
        inputs["edge"] = ExitInputs(arrays["edge_scores"], arrays["edge_present"], fusions["edge"])
    if "cloud" in arrays:
        inputs["cloud"] = ExitInputs(arrays["cloud"])
    # the exit-placement paper's multi-exit model: one edge's own scores
    for tap in model.cfg.tap_exits:
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


@torch.no_grad()
def cloud_or_share(model: DDNN, data: MultiViewData, batch: int = 512) -> float | None:
    """The % of +1 bits in the cloud's fused input on `data`, every device present, where
    that fusion is an OR (MP over binary maps); None where it is not."""
    if not model.cfg.cloud_is_or:
        return None
    model.eval()
    ones, bits = 0.0, 0
    for start in range(0, len(data), batch):
        fused = model(torch.from_numpy(data.x[start : start + batch])).or_maps[-1]
        ones += float((fused > 0).sum())
        bits += fused.numel()
    return _pct(ones / bits)


def evaluate(
    outputs: ExitOutputs, points: Sequence[ExitPoint], decisions: Decisions | None = None
) -> dict:
    """The report of `ddnn eval`: accuracy and exit fractions per tier, bytes per device.
    `decisions`: the cascade's on `outputs` under `points`, when already computed.

    With drop thresholds (the exit-placement paper), `exit_fraction` counts the samples answered at
    each exit, `abstained` those dropped there, `accuracy.overall` the share of all samples answered
    right, and `coverage` the share answered and the accuracy on those."""
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
    """Fig. 10: each single device absent in turn; accuracy per exit and overall, and the %
    of samples that device alone sees (`MultiViewData.seen_alone`)."""
    alone = data.seen_alone()
    return [
        {"missing": d, **_accuracy_without(model, data, points, [d]), "seen_alone": alone[d]}
        for d in range(data.n_views)
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


def load_evaluable(model_path: Path | str) -> tuple[DDNN, DDNNConfig, dict[str, Any]]:
    """A model file or a `ddnn export` directory, as a model, its config and metadata."""
    model_path = Path(model_path)
    if model_path.is_dir():
        model, cfg, manifest = load_exported_model(model_path)
        return model, cfg, dict(manifest.meta)
    return load_model(model_path)


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
    model, cfg, meta = load_evaluable(model_path)
    own_data, own_grid = trained_on(meta)
    dataset = loader(data or own_data, grid or own_grid)
    check_fits(dataset, cfg.model)
    if part == "all":
        return model, cfg, meta, dataset
    chosen = getattr(split(dataset, cfg.train), part, None)
    if chosen is None:
        raise DDNNError(f"the model was trained without a {part} split")
    return model, cfg, meta, chosen
