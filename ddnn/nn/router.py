"""Training the learned router of an exit (the learned-router paper, Section 2.1).

The router is fitted after the model, on the model's own outputs over the training split:
once with every device present and `RouterSpec.masks` times with devices absent at the
training dropout rate, so that it sees what a missing camera does to the exit. Its target is
the routing oracle o(x) = 1{this exit is wrong and the next tier is right}: the samples that
only escalating can fix. Its loss is eq. (7): the cross-entropy against o, weighted
1 + 2 o(x) to fit the rarer positive cases, plus lambda_r times the shortfall of its soft
coverage (the share it keeps at the exit) below the target coverage. Full-batch Adam with
a cosine decay: a few thousand rows of a dozen features train in about a second.

Inference runs in NumPy (ddnn/core/routing.py) from the weights in the model's state dict
(`routers.<exit>.*`), offline and in the live aggregator alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddnn.core.config import DDNNConfig, RouterSpec
from ddnn.core.exits import ExitInputs
from ddnn.core.routing import n_features, route_features


class RouterNet(nn.Module):
    """The router's weights, as ddnn.core.routing.Router reads them: feature standardization
    (`mean`, `scale`), a hidden ReLU layer, one output logit."""

    def __init__(self, n_classes: int, hidden: int) -> None:
        super().__init__()
        f = n_features(n_classes)
        self.register_buffer("mean", torch.zeros(f, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(f, dtype=torch.float64))
        self.hidden = nn.Linear(f, hidden, dtype=torch.float64)
        self.out = nn.Linear(hidden, 1, dtype=torch.float64)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, f) features -> (N,) logits of "the next tier should decide"."""
        x = (features - self.mean) / self.scale
        return self.out(F.relu(self.hidden(x))).squeeze(1)


def routing_oracle(this: np.ndarray, after: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """o(x) = 1{this exit is wrong and the next tier is right} (the learned-router paper, eq. (6)),
    from the two exits' (N, |C|) probabilities."""
    return ((this.argmax(1) != labels) & (after.argmax(1) == labels)).astype(np.float64)


def fit_router(
    net: RouterNet,
    features: np.ndarray,
    oracle: np.ndarray,
    spec: RouterSpec,
    coverage: float | None = None,
    seed: int = 0,
) -> None:
    """Fit `net` in place to `oracle` (N,) from `features` (N, f), with the coverage
    penalty of eq. (7) at `coverage` (default `spec.coverage`)."""
    target = spec.coverage if coverage is None else coverage
    torch.manual_seed(seed)
    for layer in (net.hidden, net.out):
        layer.reset_parameters()
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    o = torch.from_numpy(np.asarray(oracle, dtype=np.float64))
    with torch.no_grad():
        net.mean.copy_(x.mean(0))
        # A constant feature (every device present, say) gets scale 1, not 0.
        std = x.std(0)
        net.scale.copy_(torch.where(std > 1e-9, std, torch.ones_like(std)))
    weight = 1.0 + 2.0 * o
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    net.train()
    for _ in range(spec.epochs):
        logits = net(x)
        fit = (weight * F.binary_cross_entropy_with_logits(logits, o, reduction="none")).mean()
        kept = 1.0 - torch.sigmoid(logits).mean()
        loss = fit + spec.penalty * F.relu(target - kept)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()


def training_rows(
    passes: Sequence[tuple[ExitInputs, np.ndarray]], labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features and oracle over several passes of the same samples, each pass given as (the
    exit's inputs, the next tier's probabilities)."""
    features = np.concatenate([route_features(inputs) for inputs, _ in passes])
    oracle = np.concatenate(
        [routing_oracle(inputs.probs, after, labels) for inputs, after in passes]
    )
    return features, oracle


def router_exits(cfg: DDNNConfig) -> dict[str, str]:
    """Each routed exit -> the next exit of the cascade, whose answer the oracle compares."""
    exits = cfg.model.exits
    return {name: exits[exits.index(name) + 1] for name in cfg.routed_exits}
