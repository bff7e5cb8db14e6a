"""The torch runtime of a device slice: the exported `.npz` weights run in PyTorch.

Any slice runs this way, a float device tier included; a binary slice runs bit-exactly the
same without PyTorch in its packed form (devices/runtime.py `PackedSlice`). A device reaches
this class through the `ddnn.runtimes` entry point, never by importing it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddnn.core.manifest import Manifest
from ddnn.nn.export import load_device


class TorchSlice:
    name = "torch"

    def __init__(self, artifacts: Path | str, device: int) -> None:
        self.manifest: Manifest
        self.manifest, self.module = load_device(artifacts, device)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            scores, features = self.module(torch.from_numpy(image[None]))
        if scores is None:
            raise ValueError("this device slice has no exit head (a topology without local exit)")
        return scores[0].numpy(), features[0].numpy()
