"""Offline accuracy under one lying device (the `byzantine-device` fault).

A compromised device account sends, for every sample, a wrong class (the label's next) at
the largest confidence its score bound lets through: +bound on that class, -bound on the
others; it never sends feature maps, so the upper tiers decide without it. This module
evaluates the cascade with such a device, beside clean inputs, under the plain and the
trimmed local fusion (ddnn/core/fusion.py): what the trimmed fusion costs on clean data, and
what it saves under attack. The fusion and the cascade are the live aggregator's own code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ddnn.core.config import DDNNConfig
from ddnn.core.exits import ExitInputs, ExitPoint, cascade
from ddnn.core.fusion import ScoreFusion
from ddnn.data import MultiViewData
from ddnn.nn.evaluate import ExitOutputs, presence_mask, run_model
from ddnn.nn.model import DDNN


def lying_scores(
    labels: np.ndarray, n_classes: int, bound: float, block: np.ndarray | None = None
) -> np.ndarray:
    """(N, |C|) float32: what a liar sends to make the fused scores favour the class after
    each label. MP, AP: that class at +`bound`, every other at -`bound`. CC (`block`: the
    liar's (|C|, |C|) columns of the linear layer): each score at +-`bound`, by the sign of
    its weight into that class less its mean weight into the others, since a one-hot lie
    goes wherever the layer maps it (on a trained model, often to the right class)."""
    wrong = (np.asarray(labels) + 1) % n_classes
    if block is None:
        out = np.full((len(labels), n_classes), -bound, dtype=np.float32)
        out[np.arange(len(labels)), wrong] = bound
        return out
    w = np.asarray(block, dtype=np.float64)
    others = (w.sum(axis=0, keepdims=True) - w) / max(n_classes - 1, 1)  # row k: mean of rest
    towards = np.where(w - others >= 0, bound, -bound).astype(np.float32)  # (|C|, |C|)
    return towards[wrong]


def with_liar(
    honest: ExitOutputs, without: ExitOutputs, device: int, bound: float
) -> dict[str, ExitInputs]:
    """The exits' inputs when `device` lies at the local exit (`lying_scores`) and is missing
    above it: `honest` run with every device present, `without` with `device` missing."""
    local = honest.inputs["local"]
    scores = np.array(local.scores, dtype=np.float32)
    block = cc_block(local.fusion, device)
    scores[:, device] = lying_scores(honest.labels, scores.shape[2], bound, block)
    return {**without.inputs, "local": ExitInputs(scores, local.present, local.fusion)}


def cc_block(fusion: ScoreFusion | None, device: int) -> np.ndarray | None:
    """The (|C|, |C|) columns of a CC fusion's linear layer that `device`'s scores meet
    (None for MP and AP)."""
    if fusion is None or fusion.weight is None:
        return None
    c = fusion.weight.shape[0]
    return fusion.weight[:, device * c : (device + 1) * c]


def _summary(inputs: dict[str, ExitInputs], labels: np.ndarray, points: Sequence[ExitPoint]):
    d = cascade(points, inputs)
    right = (d.predictions == labels) & ~d.abstained
    local = d.exit_index == 0
    return {
        "accuracy": round(100.0 * float(right.mean()), 2),
        "local_exit": round(100.0 * float(local.mean()), 2),
        "local_exit_wrong": round(100.0 * float((local & ~right).mean()), 2),
    }


def byzantine_accuracy(
    model: DDNN,
    cfg: DDNNConfig,
    data: MultiViewData,
    points: Sequence[ExitPoint],
    bound: float,
    device: int = 0,
) -> dict[str, Any]:
    """Accuracy (%) of the cascade on `data`, share of samples leaving at the local exit and
    of those leaving there wrong, for the plain and the trimmed local fusion, on clean
    inputs and with `device` lying at `bound` (`with_liar`). The model needs a local exit."""
    if cfg.model.local is None or not points or points[0].name != "local":
        raise ValueError("a lying device's scores reach only a local exit; this model has none")
    n = cfg.model.n_devices
    rows: dict[str, Any] = {
        "aggregation": cfg.model.local.aggregation,
        "device": device,
        "bound": bound,
    }
    for robust in (False, True):
        honest = run_model(model, data, robust=robust)
        without = run_model(model, data, presence_mask(len(data), n, [device]), robust=robust)
        key = "trimmed" if robust else "plain"
        rows[key] = {
            "clean": _summary(honest.inputs, data.labels, points),
            "attacked": _summary(with_liar(honest, without, device, bound), data.labels, points),
        }
    return rows
