"""Exit policies and the exit cascade (paper Section III-D).

An exit policy turns what an exit decides on (its `ExitInputs`) into a statistic per sample and says
whether the sample is confident enough to exit there given the exit's threshold T. Policies are
chosen by name per exit (`exits.<name>.policy`): `entropy` (the paper's rule), `max_prob`, `margin`
and `router` (learned, the learned-router paper). One step of the cascade (`step`) fuses an exit's
inputs with the presence mask, takes the softmax and decides, for each sample, to exit or to
escalate; offline evaluation (`cascade`) and the live aggregator both run exits through it, so they
decide alike. The last exit of a cascade always decides.

Design: docs/design/fusion-and-exits.md (each policy's rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from ddnn.core.config import ROUTER, DDNNConfig, ExitSpec
from ddnn.core.errors import ModelFileError
from ddnn.core.fusion import ScoreFusion


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, |C|) scores, stable for large values."""
    z = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """eta(p) in [0, 1] per row: 0 for one-hot, 1 for uniform. 0 log 0 is taken as 0."""
    p = np.clip(probs, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.clip(-terms.sum(axis=-1) / np.log(probs.shape[-1]), 0.0, 1.0)


def max_probability(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=-1)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    top2 = np.sort(probs, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


@dataclass(frozen=True)
class ExitInputs:
    """What one exit decides on, for N samples: the class scores of its inputs (N, n, |C|),
    those present (N, n), and the fusion of the exit (the local exit fuses the devices' scores,
    the edge exit the edges'); or, without a fusion, the tier's own class scores (N, |C|)
    (the cloud's, or an edge's)."""

    scores: np.ndarray
    present: np.ndarray | None = None
    fusion: ScoreFusion | None = None

    @cached_property
    def probs(self) -> np.ndarray:
        """(N, |C|) class probabilities: softmax of the fused scores, in float64."""
        if self.fusion is None:
            return softmax(np.asarray(self.scores, dtype=np.float64))
        assert self.present is not None, "fusing needs the presence mask"
        return softmax(self.fusion(self.scores, self.present))


@dataclass(frozen=True)
class Policy:
    """An exit's statistic and the direction in which it means "confident"."""

    name: str
    statistic: Callable[[ExitInputs], np.ndarray]  # (N,) per sample
    confident_below: bool  # True: exit when statistic <= T; False: exit when >= T

    def exits(self, statistic: np.ndarray, probs: np.ndarray, threshold: float) -> np.ndarray:
        """Which samples exit at `threshold`, given their `statistic` under this policy and
        their class `probs`. A sample with a non-finite probability never exits early: its
        entropy would read as 0, certain."""
        confident = statistic <= threshold if self.confident_below else statistic >= threshold
        return confident & np.isfinite(probs).all(axis=-1)

    def hopeless(self, statistic: np.ndarray, drop: float) -> np.ndarray:
        """Which samples lie beyond the drop threshold, on the side of doubt."""
        return statistic > drop if self.confident_below else statistic < drop


def _of_probs(name: str, of: Callable[[np.ndarray], np.ndarray], below: bool) -> Policy:
    return Policy(name, lambda inputs: of(inputs.probs), confident_below=below)


# The policies that need nothing but the exit's probabilities; "router" needs weights.
POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        _of_probs("entropy", normalized_entropy, below=True),
        _of_probs("max_prob", max_probability, below=False),
        _of_probs("margin", top2_margin, below=False),
    )
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        known = sorted([*POLICIES, ROUTER])
        raise ValueError(f"unknown exit policy {name!r}; known: {known}") from None


class Router(Protocol):
    """A learned router (ddnn/core/routing.py): P(the next tier should decide) per sample."""

    def escalation(self, inputs: ExitInputs) -> np.ndarray: ...


@dataclass(frozen=True)
class ExitPoint:
    name: str  # "local", "edge" or "cloud"
    policy: Policy
    threshold: float
    # samples beyond it abstain here (the exit-placement paper); None: no dropping
    drop: float | None = None


def exit_points(
    cfg: DDNNConfig, exits: Sequence[str], routers: Mapping[str, Router] | None = None
) -> list[ExitPoint]:
    """The cascade's exits, with the policy and threshold of each from `cfg.exits`; an exit
    whose policy is "router" takes its router from `routers` (ddnn.core.routing)."""
    default = ExitSpec()
    points = []
    for name in exits:
        spec = cfg.exits.get(name, default)
        if spec.policy != ROUTER:
            policy = get_policy(spec.policy)
        elif routers is None or name not in routers:
            raise ModelFileError(
                f"exit {name!r} has the policy 'router' but the model holds no router for it"
            )
        else:
            policy = Policy(ROUTER, routers[name].escalation, confident_below=True)
        points.append(ExitPoint(name, policy, spec.threshold, spec.drop))
    return points


@dataclass
class Step:
    probs: np.ndarray  # (N, |C|) the exit's class probabilities
    statistic: np.ndarray  # (N,) the exit policy's statistic
    exits: np.ndarray  # (N,) bool: decided at this exit; the others escalate or abstain
    # (N,) bool: answered "abstain" here (the exit-placement paper's drop)
    abstains: np.ndarray | None = None


def step(point: ExitPoint, inputs: ExitInputs, last: bool) -> Step:
    """One exit of the cascade: fuse what arrived (with the presence mask), then exit where
    the policy is confident (everywhere at the last exit, which always decides), abstain
    where the statistic lies beyond the exit's drop threshold, and escalate the rest. At
    least one input of each sample must be present."""
    return judge(point, inputs.probs, point.policy.statistic(inputs), last)


def judge(point: ExitPoint, probs: np.ndarray, statistic: np.ndarray, last: bool) -> Step:
    """The step of `point` for samples whose probabilities and statistic are known: a
    threshold search judges the same statistic under many thresholds."""
    if last:
        return Step(probs, statistic, np.ones(len(probs), dtype=bool))
    exits = point.policy.exits(statistic, probs, point.threshold)
    abstains = None
    if point.drop is not None:
        abstains = ~exits & point.policy.hopeless(statistic, point.drop)
    return Step(probs, statistic, exits, abstains)


@dataclass
class Decisions:
    exit_index: np.ndarray  # (N,) index into the cascade's exits: where each sample ended
    predictions: np.ndarray  # (N,) class id decided (an abstaining exit's best guess)
    statistic: np.ndarray  # (N,) the deciding exit's policy statistic
    abstained: np.ndarray  # (N,) bool: answered "abstain" at its exit instead of a class


def cascade(points: Sequence[ExitPoint], inputs: Mapping[str, ExitInputs]) -> Decisions:
    """Run the exit cascade over N samples, one `step` per exit: every sample exits at the
    first point that is confident about it, or at the last point, which always decides."""
    return decide(
        [step(p, inputs[p.name], last=i == len(points) - 1) for i, p in enumerate(points)]
    )


def decide(steps: Sequence[Step]) -> Decisions:
    """The cascade's decisions from the steps of its exits, lowest first (the last one's
    `exits` all true). A threshold search builds steps from statistics computed once."""
    n = len(steps[0].probs)
    exit_index = np.full(n, len(steps) - 1)
    undecided = np.ones(n, dtype=bool)
    abstained = np.zeros(n, dtype=bool)
    for i, s in enumerate(steps[:-1]):
        leaving = undecided & s.exits
        if s.abstains is not None:
            dropped = undecided & s.abstains
            abstained |= dropped
            leaving |= dropped
        exit_index[leaving] = i
        undecided &= ~leaving
    rows = np.arange(n)
    chosen = np.stack([s.probs for s in steps])[exit_index, rows]  # (N, |C|)
    statistic = np.stack([s.statistic for s in steps])[exit_index, rows]
    return Decisions(exit_index, chosen.argmax(axis=-1), statistic, abstained)
