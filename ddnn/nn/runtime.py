"""The torch runtimes of a device slice and of an upper tier: the exported `.npz` weights
run in PyTorch.

Any slice or tier runs this way, float ones included; a binary slice runs bit-exactly the
same without PyTorch in its packed form (devices/runtime.py `PackedSlice`), and so does a
binary tier fused by CC or MP (ddnn/packed/tier.py). The services reach these classes
through the `ddnn.runtimes` entry points, never by importing them (ddnn/live/runtimes.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddnn.core.manifest import Manifest
from ddnn.core.roles import Role
from ddnn.nn.export import load_cloud, load_device, load_edge


def one_thread() -> None:
    """A service runs one sample at a time, which gains nothing from more threads, and
    several services on one machine then fight over the cores: 8 services on 2 cores decided
    16 samples/s at ~1 s latency with PyTorch's default threads, 280/s at 40 ms with 1."""
    torch.set_num_threads(1)


class TorchSlice:
    name = "torch"

    def __init__(self, artifacts: Path | str, role: Role) -> None:
        one_thread()
        assert role.index is not None
        self.manifest: Manifest
        self.manifest, self.module = load_device(artifacts, role.index)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            scores, features = self.module(torch.from_numpy(image[None]))
        if scores is None:
            raise ValueError("this device slice has no exit head (a topology without local exit)")
        return scores[0].numpy(), features[0].numpy()


class TorchTier:
    """An edge or the cloud in PyTorch: the inputs' maps (N, f, h, w) and which are present
    (N,) -> (class scores (|C|,), the tier's own feature map)."""

    name = "torch"

    def __init__(self, artifacts: Path | str, role: Role) -> None:
        one_thread()
        self.manifest: Manifest
        if role.tier == "cloud":
            self.manifest, self.module = load_cloud(artifacts)
        else:
            assert role.index is not None
            self.manifest, self.module = load_edge(artifacts, role.index)
        self.in_shape: tuple[int, int, int] = self.module.in_shape

    def __call__(self, maps: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            scores, own = self.module(torch.from_numpy(maps[None]), torch.from_numpy(present[None]))
        return scores[0].numpy(), own[0].numpy()
