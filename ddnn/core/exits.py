"""Exit criteria and the exit cascade (paper Section III-D).

An exit criterion turns a sample's class probabilities into a statistic and says whether the
sample is confident enough to exit at that point given the exit's threshold T. Criteria are
chosen by name per exit, so offline evaluation and the live aggregators share one mechanism:

- `entropy`: normalized entropy eta(p) = -sum p log p / log |C| in [0, 1]; exits when
  eta <= T (the paper's rule: T = 0 never exits, T = 1 always does);
- `max_prob`: exits when max p >= T;
- `margin`: exits when the gap between the two largest probabilities is >= T.

The last exit of a cascade always decides, whatever its criterion says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


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
class Criterion:
    """A confidence statistic and the direction in which it means "confident"."""

    name: str
    statistic: Callable[[np.ndarray], np.ndarray]
    confident_below: bool  # True: exit when statistic <= T; False: exit when >= T

    def exits(self, probs: np.ndarray, threshold: float) -> np.ndarray:
        """Boolean mask of the rows of `probs` (N, |C|) that exit at `threshold`."""
        stat = self.statistic(probs)
        return stat <= threshold if self.confident_below else stat >= threshold


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("entropy", normalized_entropy, confident_below=True),
        Criterion("max_prob", max_probability, confident_below=False),
        Criterion("margin", top2_margin, confident_below=False),
    )
}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown exit criterion {name!r}; known: {sorted(CRITERIA)}") from None


@dataclass(frozen=True)
class ExitPoint:
    name: str  # "local", "edge" or "cloud"
    criterion: Criterion
    threshold: float


@dataclass
class Decisions:
    exit_index: np.ndarray  # (N,) index into the cascade's exits
    predictions: np.ndarray  # (N,) class id decided
    statistic: np.ndarray  # (N,) the deciding exit's criterion statistic


def cascade(points: Sequence[ExitPoint], probs: dict[str, np.ndarray]) -> Decisions:
    """Run the exit cascade over per-exit probabilities (each (N, |C|)): every sample exits at
    the first point that is confident about it, or at the last point, which always decides."""
    n = len(next(iter(probs.values())))
    exit_index = np.full(n, len(points) - 1)
    undecided = np.ones(n, dtype=bool)
    for i, point in enumerate(points[:-1]):
        leaving = undecided & point.criterion.exits(probs[point.name], point.threshold)
        exit_index[leaving] = i
        undecided &= ~leaving
    stacked = np.stack([probs[p.name] for p in points])  # (E, N, |C|)
    chosen = stacked[exit_index, np.arange(n)]
    statistic = np.empty(n)
    for i, point in enumerate(points):
        rows = exit_index == i
        statistic[rows] = point.criterion.statistic(chosen[rows])
    return Decisions(exit_index, chosen.argmax(axis=-1), statistic)
