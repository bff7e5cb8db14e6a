"""Latency figures as every report gives them: p50 and p99."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    """The median and 99th percentile of `values` times `scale`, to two decimals (None for
    both when there are no values)."""
    if len(values) == 0:
        return {"p50": None, "p99": None}
    scaled = np.asarray(values, dtype=np.float64) * scale
    return {f"p{q}": round(float(np.percentile(scaled, q)), 2) for q in (50, 99)}
