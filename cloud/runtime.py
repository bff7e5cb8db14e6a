"""An upper tier's layers behind one small interface: its inputs' maps in, class scores and
its own feature map out.

Two runtimes implement it, as a device's two do (devices/runtime.py):
- `PackedTier` (ddnn/packed/tier.py): a binary tier fused by CC or MP, run on bits with
  NumPy and numba, no PyTorch, bit-exact with the torch model in eval mode;
- `TorchTier` (ddnn/nn/runtime.py): any tier in PyTorch, reached through the
  `ddnn.runtimes` entry point, so that this package never imports PyTorch: a cloud or edge
  that runs packed needs none installed.

`open_tier(artifacts, role, "auto")` takes the packed form where the export holds one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ddnn.core.manifest import Manifest, read_manifest
from ddnn.core.roles import Role, tier_inputs
from ddnn.live.runtimes import open_runtime
from ddnn.packed.tier import read_exported_tier


class TierRuntime(Protocol):
    name: str
    manifest: Manifest | None
    in_shape: tuple[int, int, int]  # of each input's feature map

    def __call__(self, maps: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """maps (N, f, h, w) float32, present (N,) bool -> (scores (|C|,) float32, the
        tier's own feature map)."""
        ...


def open_tier(artifacts: Path | str, role: Role, runtime: str = "auto") -> TierRuntime:
    """The runtime of upper tier `role` (ddnn/live/runtimes.py): "packed", "torch" or "auto"."""
    tier: TierRuntime = open_runtime(artifacts, role, runtime, read_exported_tier)
    # One run now, as a device runs its slice once on start (devices/runtime.py): numba
    # compiles a packed tier's kernels on their first call, seconds on a fresh install's
    # cold cache, which the first sample would wait out past the aggregator's deadline.
    n = len(tier_inputs(read_manifest(artifacts).ddnn_config().model, role))
    tier(np.ones((n, *tier.in_shape), np.float32), np.ones(n, bool))
    return tier
