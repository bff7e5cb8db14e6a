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

`open_runtime(artifacts, device, "auto")` picks the packed slice when the export holds one
for the device, else torch.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np

from ddnn.core.errors import ConfigError
from ddnn.core.manifest import Manifest, read_manifest, verified_path
from ddnn.core.roles import Role
from ddnn.packed.inspect import read_exported
from ddnn.packed.kernels import kernel_name, runner

RUNTIMES = ("auto", "packed", "torch")


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


def open_runtime(artifacts: Path | str, device: int, runtime: str = "auto") -> SliceRuntime:
    """The runtime for one device: "packed", "torch", or "auto" (packed where the export
    holds a packed slice for the device, torch otherwise)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        packed = read_manifest(artifacts).packed
        runtime = "packed" if Role.device(device) in packed else "torch"
    if runtime == "packed":
        return PackedSlice(artifacts, device)
    return torch_slice(artifacts, device)


def torch_slice(artifacts: Path | str, device: int) -> SliceRuntime:
    """The torch runtime (`ddnn.nn.runtime.TorchSlice`), loaded through its entry point:
    ImportError where PyTorch is not installed."""
    (plugin,) = entry_points(group="ddnn.runtimes", name="torch")
    return plugin.load()(artifacts, device)
