"""What an export holds for a device, as a packed slice: opening it (hash-checked against the
manifest) and describing it (`ddnn inspect`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddnn.core.errors import ModelFileError
from ddnn.core.manifest import Manifest, read_manifest, verified_path
from ddnn.core.roles import Role
from ddnn.packed.format import FORMAT_VERSION, PackedModel, packable, read_packed


def read_exported(
    artifacts: Path | str, device: int, manifest: Manifest | None = None
) -> tuple[PackedModel, Path]:
    """Device `device`'s packed slice from an export directory, and its path: refused with
    ModelFileError where the model has no such device, the export holds no packed slice for
    it (and why), or the file does not match its hash in the manifest or the topology."""
    if manifest is None:
        manifest = read_manifest(artifacts)
    role = Role.device(device)
    cfg = manifest.ddnn_config().model
    if not 0 <= device < cfg.n_devices:
        raise ModelFileError(f"the model has devices 0..{cfg.n_devices - 1}, not {device}")
    entry = manifest.packed.get(role)
    if entry is None:
        why = packable(cfg) or "the export predates the packed format, or packing failed"
        raise ModelFileError(
            f"{artifacts} holds no packed slice for {role} ({why}); use the torch runtime"
        )
    file = verified_path(artifacts, entry, f"the packed slice of {role}")
    model = read_packed(file)
    shape = (model.input_shape, model.n_classes, model.convs[0].real_input)
    if shape != (tuple(cfg.input_shape), len(cfg.classes), True):
        raise ModelFileError(f"{entry.file} does not fit the manifest's topology")
    return model, file


def inspect_artifact(path: Path | str, device: int = 0) -> dict[str, Any]:
    """What `ddnn inspect` shows: a packed slice's layers, parameter count and bytes, from an
    export directory (device `device`, hash-checked against the manifest) or a `.bits` file."""
    path = Path(path)
    if path.is_dir():
        model, file = read_exported(path, device)
        role = Role.device(device)
    else:
        file, role = path, None
        model = read_packed(file)
    rows = model.describe()
    return {
        "file": str(file),
        "role": role,
        "file_bytes": file.stat().st_size,
        "format_version": FORMAT_VERSION,
        "input_shape": list(model.input_shape),
        "feature_shape": list(model.feature_shape),
        "classes": model.n_classes,
        "layers": rows,
        "parameters": sum(row["parameters"] for row in rows),
        "weights_bytes": model.weights_bytes,
        "torch_float32_bytes": model.torch_float32_bytes,
    }
