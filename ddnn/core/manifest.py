"""The export manifest and artifact integrity checks, without PyTorch.

`ddnn export` (ddnn/nn/export.py) writes `manifest.json` next to the per-role artifacts; every
live service reads it first. This module is what reading needs: the manifest's schema, its
validation, and the SHA-256 check of an artifact against its manifest entry. It imports
neither PyTorch nor the model, so that a device running the bit-packed slice
(ddnn/packed/) starts with NumPy alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from ddnn.core.config import DDNNConfig, validate_config
from ddnn.core.errors import ModelFileError, problems
from ddnn.core.files import read_npz

FORMAT = "ddnn-export"
VERSION = 1
MANIFEST = "manifest.json"


class Artifact(BaseModel):
    file: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> Artifact:
        """The manifest entry of a file just written."""
        return cls(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


class Manifest(BaseModel):
    format: str
    version: int
    model_version: str
    config: dict[str, Any]
    artifacts: dict[str, Artifact]
    software: dict[str, str]
    meta: dict[str, Any] = {}  # from the model file: the data it was trained on, and so on
    # Device role -> its slice in the bit-packed format of ddnn/packed/format.py (a second form of
    # the same weights, so not a role of its own). Absent where a slice cannot be packed
    # (a float device tier) and in exports written before the packed format existed.
    packed: dict[str, Artifact] = {}
    # Role -> the largest |class score| it may send (ddnn/nn/bounds.py: twice what it gave on
    # the training data); the aggregator refuses scores beyond it. Absent in exports written
    # before it existed and of untrained models: the wire's MAX_SCORE bounds those alone.
    score_bounds: dict[str, float] = {}

    def ddnn_config(self) -> DDNNConfig:
        return validate_config(self.config, source="manifest config")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(directory: Path | str) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ModelFileError(f"{directory} holds no {MANIFEST}: not a `ddnn export` directory")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as e:
        raise ModelFileError(f"{path} is not a valid manifest: {problems(e, 1)}") from None
    if manifest.format != FORMAT:
        raise ModelFileError(f"{path} is not a DDNN export manifest (format {manifest.format!r})")
    if manifest.version != VERSION:
        raise ModelFileError(
            f"{path} has export version {manifest.version}; this ddnn reads version {VERSION}"
        )
    return manifest


def verified_path(directory: Path | str, entry: Artifact, what: str) -> Path:
    """The path of an artifact after checking that it exists and matches its hash."""
    directory = Path(directory)
    path = directory / entry.file
    if path.name != entry.file or not path.exists():
        raise ModelFileError(f"artifact {entry.file!r} of {what} is missing in {directory}")
    if sha256_file(path) != entry.sha256:
        raise ModelFileError(
            f"{path} does not match its hash in the manifest: corrupt, or from another export"
        )
    return path


def read_npz_artifact(
    directory: Path | str, manifest: Manifest, role: str
) -> dict[str, np.ndarray]:
    """The arrays of one role's `.npz` artifact, hash-checked, read without unpickling."""
    if role not in manifest.artifacts:
        raise ModelFileError(
            f"{directory} has no artifact for role {role!r}; it has {sorted(manifest.artifacts)}"
        )
    path = verified_path(directory, manifest.artifacts[role], f"role {role!r}")
    return read_npz(path, error=ModelFileError, what="artifact")
