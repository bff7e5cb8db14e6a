"""The generated C slice (ddnn/packed/codegen.py) built for this machine and called through
ctypes: what the exactness tests and `ddnn bench device` run."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.core.packages import DEBIAN_PACKAGES
from ddnn.core.payloads import camera_frames
from ddnn.data import check_fits, load_spec, replay_part, trained_on
from ddnn.packed.codegen import SOURCE, write_slice
from ddnn.packed.format import PackedModel

# What the generated code is held to: strict C99, no warnings. -ffp-contract=off keeps a
# compiler from fusing the head's multiply and add where the packed format says not to.
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]
# What `ddnn bench device` times it with: as numba compiles its kernels (LLVM at -O3, for
# this machine's CPU). The bench checks its outputs too.
BENCH_CFLAGS = [*CFLAGS, "-O3", "-march=native"]


def need_tool(name: str) -> str:
    """The path of a build tool, or a DDNNError naming the package that brings it."""
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGES[name]
        raise DDNNError(f"{name} is not installed (Debian: apt-get install {package})")
    return path


def compile_c(compiler: str, args: list[str]) -> None:
    """Run a compiler; its complaints in the error where it fails."""
    proc = subprocess.run([need_tool(compiler), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DDNNError(f"{compiler} failed:\n{proc.stderr.strip()}")


class HostSlice:
    """A device's slice as `ddnn codegen` wrote it into `folder` (of the packed slice
    `model`), compiled into a shared library there: a uint8 frame in, the class scores and
    the wire's feature bits out."""

    def __init__(self, folder: Path, model: PackedModel, flags: list[str] = CFLAGS) -> None:
        library = folder / "ddnn_slice.so"
        compile_c("gcc", [*flags, "-shared", "-fPIC", "-o", str(library), str(folder / SOURCE)])
        self._run = ctypes.CDLL(str(library)).ddnn_device_run
        self.shape = model.input_shape
        self.scores = np.zeros(model.n_classes, np.float32)
        self.bits = np.zeros((int(np.prod(model.feature_shape)) + 7) // 8, np.uint8)
        # the frame is copied into a buffer of our own: its address, like the outputs', is
        # then taken once (numpy's .ctypes costs about a microsecond a call)
        self._frame = np.zeros(self.shape, np.uint8)
        arrays = (self._frame, self.scores, self.bits)
        self._pointers = [ctypes.c_void_p(a.ctypes.data) for a in arrays]

    @classmethod
    def of(cls, model: PackedModel, folder: Path, flags: list[str] = CFLAGS) -> HostSlice:
        """Generate `model`'s C into `folder`, then compile it."""
        write_slice(model, 0, "host", "a packed slice", folder)
        return cls(folder, model, flags)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, bytes]:
        if pixels.dtype != np.uint8 or pixels.shape != self.shape:
            raise ValueError(f"the slice takes uint8 frames of shape {self.shape}")
        self._frame[...] = pixels
        self._run(*self._pointers)
        return self.scores.copy(), self.bits.tobytes()


def camera_test_frames(artifacts: Path, device: int, n: int) -> np.ndarray:
    """Up to `n` frames of device `device`'s view of the test part of the data the export was
    trained on (the frames its devices replay), as a camera gives them: uint8."""
    manifest = read_manifest(artifacts)
    cfg = manifest.ddnn_config()
    whole = load_spec(*trained_on(manifest.meta))
    check_fits(whole, cfg.model)
    return camera_frames(replay_part(whole, "test", cfg.train).x[:n, device])
