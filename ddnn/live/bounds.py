"""The score bounds a service holds its peers' class scores to.

The wire takes any score within +-`MAX_SCORE` (1e6: it keeps fusion finite), far beyond the
tens a trained model gives, and a score of 1e5 from one device decides a sample under MP,
AP and CC alike. `ddnn export` writes, per role, twice the largest |score| that role gave on
the training data (the manifest's `score_bounds`, ddnn/nn/bounds.py); scores beyond their
sender's bound are refused, counted under one reason, and the sample is decided from the
others. An export without bounds (older, or of an untrained model) bounds scores by the
wire's `MAX_SCORE` alone.
"""

from __future__ import annotations

import numpy as np

from ddnn.core.manifest import Manifest
from ddnn.live.service import Rejected
from ddnn.live.wire import MAX_SCORE

BEYOND = "scores beyond their sender's bound"  # the counted reason: one, whatever the sender


class ScoreBounds:
    """Role -> the largest |score| it may send, from a manifest."""

    def __init__(self, bounds: dict[str, float]) -> None:
        self.bounds = {role: min(float(b), MAX_SCORE) for role, b in bounds.items()}

    @classmethod
    def of(cls, manifest: Manifest) -> ScoreBounds:
        return cls(manifest.score_bounds)

    def bound(self, role: str) -> float:
        """`role`'s bound: the export's, or the wire's where the export has none."""
        return self.bounds.get(str(role), MAX_SCORE)

    def check(self, role: str, values: np.ndarray) -> None:
        """Raise `Rejected` (reason `BEYOND`) if any of `values` from `role` lies beyond its
        bound: such scores would let one sender force a confident exit."""
        bound = self.bound(role)
        largest = float(np.abs(values).max(initial=0.0))
        if not largest <= bound:
            raise Rejected(BEYOND, f"{role}: |score| {largest:.4g} over {bound:.4g}")
