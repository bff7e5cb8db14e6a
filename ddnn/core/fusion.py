"""Fusion of class scores in NumPy: MP, AP and CC with its linear layer (paper Section III-B).

What the local aggregator runs on the devices' class scores, and on the edges' scores for the
edge exit, from the exported weights, without PyTorch; offline evaluation fuses the model's
scores with the same code, so that both take the same decisions (ddnn/core/exits.py `step`).
It computes what ddnn/nn/fusion.py's torch modules compute, summing in float64 in a fixed
order so that a sample fused alone (live) and in a batch (offline) gives the same bits.
Missing inputs are handled as in training (the presence mask). Trimmed fusion (`trim`): with
at least `MIN_TRIMMED` inputs, each class leaves out its highest and lowest input, so one
lying device cannot decide alone.

Design: docs/design/fusion-and-exits.md (rounding, missing inputs, the trimmed fusion).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ddnn.core.config import Aggregation, ModelConfig
from ddnn.core.errors import ModelFileError

MIN_TRIMMED = 3  # inputs present for trimmed fusion to leave out the extremes of a class


class ScoreFusion:
    """Fuses the class-score vectors of `n_inputs` inputs with one of the paper's schemes;
    CC also needs the weights of its linear layer, (|C|, n_inputs * |C|) and (|C|,)."""

    def __init__(
        self,
        scheme: Aggregation,
        n_inputs: int,
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        trim: bool = False,
    ) -> None:
        if scheme == "CC" and (weight is None or bias is None):
            raise ValueError("CC fusion of class scores needs its linear layer's weights")
        self.scheme = scheme
        self.n_inputs = n_inputs
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float64)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.trim = trim  # trimmed fusion (module doc)

    def trimmed(self, trim: bool = True) -> ScoreFusion:
        """This fusion, trimmed (module doc) or not."""
        return ScoreFusion(self.scheme, self.n_inputs, self.weight, self.bias, trim)

    def __call__(self, scores: np.ndarray, present: np.ndarray) -> np.ndarray:
        """scores (N, n_inputs, |C|), present (N, n_inputs) bool -> fused (N, |C|) float64."""
        x = np.asarray(scores, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        if self.trim:
            return self._trimmed(x, present)
        if self.scheme == "MP":
            fused = np.where(present[:, :, None], x, -np.inf).max(axis=1)
            return np.where(present.any(axis=1)[:, None], fused, 0.0)
        if self.scheme == "AP":
            total = np.zeros((x.shape[0], x.shape[2]))
            for i in range(x.shape[1]):
                total += np.where(present[:, i, None], x[:, i], 0.0)
            return total / np.maximum(present.sum(axis=1), 1)[:, None]
        assert self.weight is not None and self.bias is not None
        flat = np.where(present[:, :, None], x, 0.0).reshape(len(x), -1)
        fused = np.broadcast_to(self.bias, (len(x), len(self.bias))).copy()
        for j in range(flat.shape[1]):
            fused += flat[:, j, None] * self.weight[None, :, j]
        return fused

    def _contributions(self, x: np.ndarray) -> np.ndarray:
        """(N, n, |C|): what each input adds to each class's fused score (CC: its block of
        the linear layer applied to its scores, summed in a fixed order)."""
        if self.scheme != "CC":
            return x
        assert self.weight is not None
        n, c = x.shape[1], x.shape[2]
        out = np.zeros((x.shape[0], n, len(self.weight)))
        for i in range(n):
            for j in range(c):
                out[:, i] += x[:, i, j, None] * self.weight[None, :, i * c + j]
        return out

    def _trimmed(self, x: np.ndarray, present: np.ndarray) -> np.ndarray:
        """The trimmed fusion of the module doc: per class, the highest and lowest present
        input are left out where at least `MIN_TRIMMED` are present."""
        parts = self._contributions(x)  # (N, n, C)
        keep = np.broadcast_to(present[:, :, None], parts.shape).copy()
        rows = (present.sum(axis=1) >= MIN_TRIMMED)[:, None]  # (N, 1)
        inputs = np.arange(parts.shape[1])[None, :, None]
        high = np.where(keep, parts, -np.inf).argmax(axis=1)[:, None]  # (N, 1, C)
        low_of = np.where(keep & (inputs != high), parts, np.inf)
        low = low_of.argmin(axis=1)[:, None]
        keep &= ~(rows[:, :, None] & ((inputs == high) | (inputs == low)))
        if self.scheme == "MP":
            fused = np.where(keep, parts, -np.inf).max(axis=1)
        else:
            fused = np.zeros((parts.shape[0], parts.shape[2]))
            for i in range(parts.shape[1]):
                fused += np.where(keep[:, i], parts[:, i], 0.0)
            if self.scheme == "AP":
                fused /= np.maximum(keep.sum(axis=1), 1)
            else:
                assert self.bias is not None
                fused += self.bias[None, :]
        # rows with nothing left out: the plain fusion's very bits (CC sums in its own order)
        return np.where(rows, fused, self.trimmed(False)(x, present))


def _fusion(
    scheme: Aggregation, n_inputs: int, n_classes: int, state: Mapping[str, np.ndarray], prefix: str
) -> ScoreFusion:
    if scheme != "CC":
        return ScoreFusion(scheme, n_inputs)
    weight, bias = state.get(f"{prefix}linear.weight"), state.get(f"{prefix}linear.bias")
    if weight is None or bias is None:
        raise ModelFileError(f"the weights of the CC fusion {prefix}linear are missing")
    if weight.shape != (n_classes, n_inputs * n_classes) or bias.shape != (n_classes,):
        raise ModelFileError(
            f"the CC fusion {prefix}linear has weights of shape {weight.shape} and "
            f"{bias.shape}; the topology needs {(n_classes, n_inputs * n_classes)} and "
            f"{(n_classes,)}"
        )
    return ScoreFusion(scheme, n_inputs, weight, bias)


def score_fusions(
    model: ModelConfig, state: Mapping[str, np.ndarray], robust: bool | None = None
) -> dict[str, ScoreFusion]:
    """The fusion of class scores at the local exit (over the devices) and at the edge exit
    (over the edges), by exit name, from weights named as in the whole model's state dict
    (`local.linear.weight`, ...): the aggregator's artifact, or the model's own weights.
    `robust`: whether the local exit's fusion is trimmed (module doc; None: as the config's
    `local.robust` says). The edge exit's never is: a few edges cannot outvote one."""
    n_classes = len(model.classes)
    fusions = {}
    if model.local is not None:
        scheme = model.local.aggregation
        local = _fusion(scheme, model.n_devices, n_classes, state, "local.")
        fusions["local"] = local.trimmed(model.local.robust if robust is None else robust)
    if model.edge is not None:
        scheme, n_edges = model.edge.exit_aggregation, len(model.edge.groups)
        fusions["edge"] = _fusion(scheme, n_edges, n_classes, state, "edge_exit.")
    return fusions
