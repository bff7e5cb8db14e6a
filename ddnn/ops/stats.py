"""Figures as every report gives them: latency as p50 and p99, and bytes per device per
sample (`ddnn demo`'s summary and `ddnn monitor` count them the same way)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddnn.live.wire import Decision


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    """The median and 99th percentile of `values` times `scale`, to two decimals (None for
    both when there are no values)."""
    if len(values) == 0:
        return {"p50": None, "p99": None}
    scaled = np.asarray(values, dtype=np.float64) * scale
    return {f"p{q}": round(float(np.percentile(scaled, q)), 2) for q in (50, 99)}


def bytes_per_device(decision: Decision) -> float | None:
    """What each device that took part in `decision` sent for it, on average: its class
    scores and, when the sample went up, its feature map (None when no device took part)."""
    if not decision.devices:
        return None
    sent = decision.bytes.get("device_scores", 0) + decision.bytes.get("device_features", 0)
    return sent / len(decision.devices)
