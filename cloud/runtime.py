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

from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np

from ddnn.core.errors import ConfigError
from ddnn.core.manifest import Manifest, read_manifest
from ddnn.core.roles import Role, tier_inputs
from ddnn.packed.tier import read_exported_tier

RUNTIMES = ("auto", "packed", "torch")


class TierRuntime(Protocol):
    name: str
    manifest: Manifest | None
    in_shape: tuple[int, int, int]  # of each input's feature map

    def __call__(self, maps: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """maps (N, f, h, w) float32, present (N,) bool -> (scores (|C|,) float32, the
        tier's own feature map)."""
        ...


def open_tier(artifacts: Path | str, role: Role, runtime: str = "auto") -> TierRuntime:
    """The runtime of upper tier `role`: "packed", "torch", or "auto" (packed where the
    export holds a packed form of the tier, torch otherwise)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    manifest = read_manifest(artifacts)
    if runtime == "auto":
        runtime = "packed" if role in manifest.packed else "torch"
    if runtime == "packed":
        tier: TierRuntime = read_exported_tier(artifacts, role)
    else:
        (plugin,) = entry_points(group="ddnn.runtimes", name="torch-tier")
        tier = plugin.load()(artifacts, role)
    # One run now, as a device runs its slice once on start (devices/runtime.py): numba
    # compiles a packed tier's kernels on their first call, seconds on a fresh install's
    # cold cache, which the first sample would wait out past the aggregator's deadline.
    n = len(tier_inputs(manifest.ddnn_config().model, role))
    tier(np.ones((n, *tier.in_shape), np.float32), np.ones(n, bool))
    return tier
