"""The device slice behind one small interface: a frame in, class scores and a feature map out.

`TorchSlice` runs the exported weights with PyTorch; the NumPy bit-packed runtime of a later
issue implements the same call, so the device service does not change when it is swapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ddnn.export import Manifest, load_device


class SliceRuntime(Protocol):
    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image (C, H, W) float32 0..255 -> (scores (|C|,) float32, feature map (f, h, w))."""
        ...


class TorchSlice:
    def __init__(self, artifacts: Path | str, device: int) -> None:
        import torch

        self._torch = torch
        self.manifest: Manifest
        self.manifest, self.module = load_device(artifacts, device)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.no_grad():
            scores, features = self.module(self._torch.from_numpy(image[None]))
        if scores is None:
            raise ValueError("this device slice has no exit head (a topology without local exit)")
        return scores[0].numpy(), features[0].numpy()
