"""The learned router of an exit (the learned-router paper), run in NumPy: offline and in the
live aggregator. A small MLP on what the exit knows (its fused probabilities, their entropy,
margins, the inputs present and agreeing) gives the probability that the next tier should
decide. Summed in float64 in a fixed order, so that a sample routed alone (live) and in a
batch (offline) takes the same decision.

Design: docs/design/router.md (the features, the oracle it is trained on).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ddnn.core.config import DDNNConfig
from ddnn.core.errors import ModelFileError
from ddnn.core.exits import ExitInputs, normalized_entropy

MARGINS = 4  # margins of the top class over the next ones, at most


def n_features(n_classes: int) -> int:
    """How many features the router of an exit over |C| classes reads."""
    return n_classes + 1 + min(n_classes - 1, MARGINS) + 2


def route_features(inputs: ExitInputs) -> np.ndarray:
    """(N, n_features) float64: probabilities, normalized entropy, the top class's margins,
    the share of inputs present and the share of present inputs whose own top class is the
    fused one (both 1 at an exit of a single input)."""
    probs = inputs.probs
    n, k = probs.shape
    ranked = -np.sort(-probs, axis=1)
    margins = ranked[:, :1] - ranked[:, 1 : 1 + min(k - 1, MARGINS)]
    if inputs.present is None:
        present_share = agree_share = np.ones(n)
    else:
        present = np.asarray(inputs.present, dtype=bool)
        count = np.maximum(present.sum(axis=1), 1)
        agree = (
            np.asarray(inputs.scores).argmax(axis=2) == probs.argmax(axis=1)[:, None]
        ) & present
        present_share = present.sum(axis=1) / present.shape[1]
        agree_share = agree.sum(axis=1) / count
    columns = [probs, normalized_entropy(probs)[:, None], margins]
    columns += [present_share[:, None], agree_share[:, None]]
    return np.concatenate(columns, axis=1).astype(np.float64)


class Router:
    """P(the next tier should decide) = sigmoid(w2 . relu(W1 (x - mean) / scale + b1) + b2),
    x = `route_features`; the weights as trained by ddnn/nn/router.py."""

    ARRAYS = ("mean", "scale", "hidden.weight", "hidden.bias", "out.weight", "out.bias")

    def __init__(self, arrays: Mapping[str, np.ndarray], n_classes: int, what: str) -> None:
        f = n_features(n_classes)
        missing = [a for a in self.ARRAYS if a not in arrays]
        if missing:
            raise ModelFileError(f"{what}: the router's arrays {missing} are missing")
        w1 = np.asarray(arrays["hidden.weight"], dtype=np.float64)
        h = w1.shape[0] if w1.ndim == 2 else -1
        expected = {
            "mean": (f,),
            "scale": (f,),
            "hidden.weight": (h, f),
            "hidden.bias": (h,),
            "out.weight": (1, h),
            "out.bias": (1,),
        }
        for name, shape in expected.items():
            if h < 1 or np.shape(arrays[name]) != shape:
                raise ModelFileError(
                    f"{what}: the router's {name} has shape {np.shape(arrays[name])}; an exit "
                    f"over {n_classes} classes needs {shape}"
                )
        self.mean = np.asarray(arrays["mean"], dtype=np.float64)
        self.scale = np.asarray(arrays["scale"], dtype=np.float64)
        self.w1, self.b1 = w1, np.asarray(arrays["hidden.bias"], dtype=np.float64)
        self.w2 = np.asarray(arrays["out.weight"], dtype=np.float64)[0]
        self.b2 = float(np.asarray(arrays["out.bias"], dtype=np.float64)[0])
        if not all(np.isfinite(a).all() for a in (self.mean, self.w1, self.b1, self.w2)) or not (
            np.isfinite(self.b2) and np.isfinite(self.scale).all() and (self.scale > 0).all()
        ):
            raise ModelFileError(f"{what}: the router's weights are not all finite")

    def escalation(self, inputs: ExitInputs) -> np.ndarray:
        """(N,) the probability that the next tier should decide each sample."""
        x = (route_features(inputs) - self.mean) / self.scale
        hidden = np.broadcast_to(self.b1, (len(x), len(self.b1))).copy()
        for j in range(x.shape[1]):
            hidden += x[:, j, None] * self.w1[None, :, j]
        np.maximum(hidden, 0.0, out=hidden)
        z = np.full(len(x), self.b2)
        for j in range(hidden.shape[1]):
            z += hidden[:, j] * self.w2[j]
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))


def routers_from_state(cfg: DDNNConfig, state: Mapping[str, np.ndarray]) -> dict[str, Router]:
    """The router of each exit whose policy is "router", by exit name, from weights named as
    in the whole model's state dict (`routers.local.mean`, ...): the aggregator's artifact,
    or the model's own weights."""
    n_classes = len(cfg.model.classes)
    out = {}
    for name in cfg.routed_exits:
        prefix = f"routers.{name}."
        arrays = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        out[name] = Router(arrays, n_classes, f"router of exit {name!r}")
    return out
