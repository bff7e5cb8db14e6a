"""Offline hard-example mining (`ddnn hard`): a model's cascade over a data set, and
the samples `HardRule` keeps, each with the decision that made it hard."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddnn.core.config import DDNNConfig
from ddnn.core.exits import cascade, normalized_entropy
from ddnn.core.hard import HardRule
from ddnn.data import MultiViewData
from ddnn.nn.evaluate import model_exit_points, run_model
from ddnn.nn.model import DDNN


@dataclass
class HardExamples:
    rows: np.ndarray  # (M,) the hard samples' indices in the mined data
    exits: list[str]  # the exit that decided each
    predicted: list[str | None]  # the class it decided (None: abstained)
    entropy: np.ndarray  # (M,) the deciding exit's normalized entropy
    reasons: list[list[str]]  # why each is hard (HardRule.reasons' names)
    reason_counts: dict[str, int]  # per reason, how many of all mined samples it holds for


def mine(
    model: DDNN, cfg: DDNNConfig, data: MultiViewData, rule: HardRule, present: np.ndarray
) -> HardExamples:
    """Run `model` over `data` with the devices of `present` (N, D) as the live system
    would decide, and keep what `rule` calls hard."""
    outputs = run_model(model, data, present)
    points = model_exit_points(model, cfg)
    names = [p.name for p in points]
    decided = cascade(points, outputs.inputs)
    n = len(data)
    probs = np.stack([outputs.probs[name] for name in names])[decided.exit_index, np.arange(n)]
    entropy = normalized_entropy(probs)
    escalated = decided.exit_index > 0 if names[0] == "local" else np.zeros(n, bool)
    facts = (escalated, ~present.all(axis=1), decided.abstained, entropy)
    reasons = rule.reasons(*facts)
    rows = np.flatnonzero(rule.holds(*facts))
    return HardExamples(
        rows=rows,
        exits=[names[decided.exit_index[i]] for i in rows],
        predicted=[
            None if decided.abstained[i] else data.classes[decided.predictions[i]] for i in rows
        ],
        entropy=entropy[rows],
        reasons=[[name for name, mask in reasons.items() if mask[i]] for i in rows],
        reason_counts={name: int(mask.sum()) for name, mask in reasons.items()},
    )
