"""The device slice behind one small interface: a frame in, class scores and a feature map out.

Two runtimes implement it:
- `PackedSlice` (the default): the slice exported in the bit-packed format of ddnn/packed/,
  run with NumPy and, when installed, numba's compiled kernels. No PyTorch: weights are bits,
  batch norm + sign are integer (or float32) thresholds. Bit-exact with the torch model in
  eval mode (ddnn/packed/format.py says exactly in what sense).
- `TorchSlice` (ddnn/nn/runtime.py): the exported weights in PyTorch, for any slice, a float
  device tier included. It lives with the model code, and a device finds it through the
  `ddnn.runtimes` entry point (pyproject.toml), so that this package never imports PyTorch:
  a device that runs the packed slice needs none installed.

`open_slice(artifacts, device, "auto")` picks the packed slice when the export holds one for
the device, else torch (ddnn/live/runtimes.py, as a tier's runtime is picked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ddnn.core.manifest import Manifest, read_manifest, verified_path
from ddnn.core.roles import Role
from ddnn.live.runtimes import open_runtime
from ddnn.packed.inspect import read_exported
from ddnn.packed.kernels import kernel_name, runner


class SliceRuntime(Protocol):
    name: str
    manifest: Manifest

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image (C, H, W) float32 0..255 -> (scores (|C|,) float32, feature map (f, h, w))."""
        ...


class PackedSlice:
    """The bit-packed slice of one device, run with numba when importable, else NumPy. The
    device refuses to start when any artifact of its role (the packed file or the role's
    .npz) does not match its hash in the manifest."""

    def __init__(self, artifacts: Path | str, device: int) -> None:
        self.manifest = read_manifest(artifacts)
        self.model, _ = read_exported(artifacts, device, self.manifest)
        role = Role.device(device)
        if role in self.manifest.artifacts:
            verified_path(artifacts, self.manifest.artifacts[role], f"role {role!r}")
        self.kernel = kernel_name("auto")
        self.name = f"packed ({self.kernel})"
        self._run = runner(self.model, "auto")
        self._run(np.zeros(self.model.input_shape, np.float32))  # compile now, not on frame 0

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._run(image)


def open_slice(artifacts: Path | str, device: int, runtime: str = "auto") -> SliceRuntime:
    """The runtime of one device (ddnn/live/runtimes.py): "packed", "torch" or "auto"."""
    return open_runtime(artifacts, Role.device(device), runtime, _packed)


def _packed(artifacts: Path | str, role: Role) -> SliceRuntime:
    assert role.index is not None
    return PackedSlice(artifacts, role.index)
