"""Calibration: the exit thresholds of a trained model, picked on held-out samples by a rule.

The rule (`calibration.rule`; `ddnn train` and `ddnn calibrate`) aims at a target share of
samples per exit, or at a bytes budget: "share" (the default: a set share leaves at each
named exit, `calibration.shares`, unless that costs more than `max_loss` points), "max_loss"
(the least communication within `max_loss` points, plus a margin) or "best" (the best
overall accuracy). A share by default, because on a few hundred validation samples the
margin of "max_loss" decides more than the model does.

Design: docs/design/calibration.md (the rules, and the measurements behind the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import product

import numpy as np

from ddnn.core.config import CalibrationSpec
from ddnn.core.exits import ExitPoint, cascade, decide, judge, step
from ddnn.nn.evaluate import ExitOutputs, with_thresholds


def loss_bound(last_right: np.ndarray, right: np.ndarray, margin: float) -> float:
    """The accuracy points a cascade loses against the last exit alone (`last_right`,
    `right`: per sample, bool), plus `margin` standard errors of that paired difference
    (minus, for a negative margin)."""
    diff = last_right.astype(np.float64) - right
    return float(100.0 * (diff.mean() + margin * diff.std() / np.sqrt(len(diff))))


def pick_by_share(
    outputs: ExitOutputs,
    points: Sequence[ExitPoint],
    shares: dict[str, float],
    max_loss: float = 1.0,
    confidence: float = 1.5,
) -> dict[str, float]:
    """Rule "share": the thresholds at which `shares[name]` of the samples leave at each named
    early exit of `points` (names it does not have are ignored; its other early exits are
    searched by rule "max_loss" with those fixed). If the samples are evidence that this
    loses more than `max_loss` points against the last exit (the loss minus `confidence`
    standard errors is over it: a weak early exit), rule "max_loss"'s thresholds instead."""
    early = [p.name for p in points[:-1]]
    wanted = {name: share for name, share in shares.items() if name in early}
    if not wanted:
        return pick_thresholds(outputs, points, "max_loss", max_loss, confidence)
    chosen = thresholds_for_fractions(outputs, points, wanted)
    rest = [name for name in early if name not in chosen]
    if rest:
        fixed = with_thresholds(points, chosen)
        chosen |= pick_thresholds(outputs, fixed, "max_loss", max_loss, confidence, search=rest)
    d = cascade(with_thresholds(points, chosen), outputs.inputs)
    right = (d.predictions == outputs.labels) & ~d.abstained
    last_right = outputs.probs[points[-1].name].argmax(1) == outputs.labels
    if loss_bound(last_right, right, -confidence) > max_loss:
        return pick_thresholds(outputs, points, "max_loss", max_loss, confidence)
    return {name: round(float(t), 4) for name, t in chosen.items()}


RULES = ("share", "max_loss", "best")


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
    plus `confidence` standard errors of that loss, stays within `max_loss` points (none
    does, when exits the caller fixed already lose more: the least loss). The
    standard error is that of the per-sample paired difference (last exit right, cascade
    wrong, or the reverse), so a threshold is taken only where the held-out data is evidence
    for it: the cheapest setting that merely happens to fit on a few hundred validation
    samples sits at the edge of the region and lost 1.5-2 points on test. Ties go to cheaper
    settings. Meant for held-out validation data, never the test set.
    """
    if rule not in ("best", "max_loss"):
        raise ValueError(f"rule must be best or max_loss here, got {rule!r}")
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
        bound = loss_bound(last_right, right, confidence)
        # cost: how many samples go past each exit, lowest exit first (device bytes first)
        cost = tuple(float((d.exit_index > i).mean()) for i in range(len(searched)))
        candidates.append((100.0 * right.mean(), bound, cost, combo))
    if rule == "best":
        best = max(c[0] for c in candidates)
        eligible = [c for c in candidates if c[0] >= best - 1e-9]
    else:
        eligible = [c for c in candidates if c[1] <= max_loss + 1e-9]
        # none within it (exits fixed by the caller already lose more): the least loss
        eligible = eligible or [min(candidates, key=lambda c: c[1])]
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


def calibrated(
    outputs: ExitOutputs,
    points: Sequence[ExitPoint],
    spec: CalibrationSpec,
    rule: str | None = None,
) -> dict[str, float]:
    """The thresholds `spec` picks on `outputs` (by `rule` instead of its own when given)."""
    rule = spec.rule if rule is None else rule
    if rule == "share":
        return pick_by_share(outputs, points, spec.shares, spec.max_loss, spec.confidence)
    return pick_thresholds(outputs, points, rule, spec.max_loss, spec.confidence)
