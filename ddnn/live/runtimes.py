"""Which runtime a service runs its layers in, chosen the same way for a device and a tier:
the packed form (bits, NumPy and numba, no PyTorch) where the export holds one for the role,
else PyTorch (ddnn/nn/runtime.py), which a service reaches through the `ddnn.runtimes` entry
points (pyproject.toml) and never imports, so that one running packed needs none installed."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from ddnn.core.errors import ConfigError
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import Role

RUNTIMES = ("auto", "packed", "torch")
R = TypeVar("R")


def open_runtime(
    artifacts: Path | str, role: Role, runtime: str, open_packed: Callable[[Path | str, Role], R]
) -> R:
    """The layers of `role` in `runtime`: "packed" (`open_packed`), "torch", or "auto"
    (packed where the export holds a packed form of the role, torch otherwise). Torch is
    the entry point named for the role's kind ("device" or "tier"): ImportError where
    PyTorch is not installed."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        runtime = "packed" if role in read_manifest(artifacts).packed else "torch"
    if runtime == "packed":
        return open_packed(artifacts, role)
    kind = "device" if role.tier == "device" else "tier"
    (plugin,) = entry_points(group="ddnn.runtimes", name=kind)
    return plugin.load()(artifacts, role)
