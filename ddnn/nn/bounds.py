"""Score bounds fixed at export: per role that sends class scores, `MARGIN` times the
largest |score| it gave on the training part (at least `FLOOR`), written to the manifest for
the aggregator to refuse scores beyond (ddnn/live/bounds.py). Why per role, and over which
presence patterns: docs/design/score-bounds.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ddnn.core.config import DDNNConfig
from ddnn.core.errors import DDNNError
from ddnn.core.roles import CLOUD, Role
from ddnn.data import load_spec, split, trained_on
from ddnn.nn.evaluate import presence_mask, run_model
from ddnn.nn.model import DDNN

MARGIN = 2.0  # bound = MARGIN x the largest |score| seen on the training part ...
# ... but never below FLOOR: a trained model's logits are in the tens (ddnn/live/wire.py),
# and a camera that rarely saw the object in training (largest |score| 1.9 on one tiny
# model) must not have its honest scores refused on a clearer day. The bound stops scores
# of 1e5; keeping one liar from deciding within it is the trimmed fusion's work.
FLOOR = 20.0


def _largest(scores: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.abs(np.asarray(scores, dtype=np.float64)).max(axis=axes, initial=0.0)


def observed_bounds(model: DDNN, cfg: DDNNConfig, meta: Mapping[str, Any]) -> dict[str, float]:
    """Role -> `MARGIN` x the largest |class score| it gives on the training part of the data
    `meta` names (at least `FLOOR`); {} (with a warning) where that data cannot be loaded,
    or `meta` names none (an untrained model: the aggregator then holds scores to the
    wire's bound alone)."""
    if "data" not in meta:
        return {}
    try:
        data = split(load_spec(*trained_on(meta)), cfg.train).train
    except DDNNError as e:
        warnings.warn(f"no score bounds in this export: {e}", stacklevel=2)
        return {}
    n = cfg.model.n_devices
    seen: dict[str, float] = {}
    for missing in [[], *([d] for d in range(n) if n > 1)]:
        outputs = run_model(model, data, presence_mask(len(data), n, missing))
        found: dict[str, np.ndarray] = {}
        if "local" in outputs.inputs and not missing:  # a device's scores ignore the rest
            for d, value in enumerate(_largest(outputs.inputs["local"].scores, (0, 2))):
                found[str(Role.device(d))] = value
        if "edge" in outputs.inputs:
            present = outputs.inputs["edge"].present
            scores = np.where(present[:, :, None], outputs.inputs["edge"].scores, 0.0)
            for e, value in enumerate(_largest(scores, (0, 2))):
                found[str(Role.edge(e))] = value
        if "cloud" in outputs.inputs:
            found[str(CLOUD)] = _largest(outputs.inputs["cloud"].scores, (0, 1))
        for role, value in found.items():
            seen[role] = max(seen.get(role, 0.0), float(value))
    return {role: round(max(MARGIN * value, FLOOR), 4) for role, value in sorted(seen.items())}
