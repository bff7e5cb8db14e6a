"""Score bounds fixed at export (issue 27): how large an honest tier's class scores get.

The wire refuses only scores beyond +-`MAX_SCORE` (ddnn/live/wire.py, 1e6), while a trained
model's logits are in the tens: a device account sending +-1e6 would force a confident
local exit with its own class under MP, AP and CC alike. So `ddnn export` runs the model over
its training part and writes, per role that sends class scores (each device, each edge, the
cloud), `MARGIN` times the largest |score| seen there into the manifest (`score_bounds`);
the aggregator refuses scores beyond their role's bound (ddnn/live/bounds.py). No bound is
below `FLOOR`.

Per role, not one bound for all: devices see differently placed cameras and their heads
scale differently, and a tighter bound for each is a smaller lever for a lying one. Per
class would be tighter still, but a class's scores swing with what the camera sees, and the
trimmed fusion (ddnn/core/fusion.py) is what takes the rest of a liar's lever away.

The upper tiers' scores depend on which devices are present, so their bounds are taken
over the training part with every device present and with each device in turn missing
(what deployments meet); the devices' do not depend on it.
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
