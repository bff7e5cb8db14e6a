"""Per-role deployment artifacts: what each live service loads, and nothing more.

`ddnn export` splits a trained model into one artifact per role (each device's slice, the
local aggregator, each edge, the cloud) plus `manifest.json`. An artifact is a NumPy `.npz`
of that role's weights, read back with `allow_pickle=False`: plain arrays, no code. Binary
device slices, and binary upper tiers that pack, are also written bit-packed (`.bits`:
ddnn/packed/). The manifest (schema and reading: ddnn/core/manifest.py) holds the config,
the software versions and a SHA-256 per artifact, from which the model version that topics
carry is derived. The local aggregator's artifact also holds the edge-exit fusion.

Design: docs/design/export.md (what each artifact and the manifest hold; the model version).
"""

from __future__ import annotations

import hashlib
import json
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import ddnn
from ddnn.core.config import DDNNConfig, ModelConfig
from ddnn.core.errors import ConfigError, DDNNError, ModelFileError
from ddnn.core.files import make_folder, reason, replaced
from ddnn.core.manifest import (
    FORMAT,
    MANIFEST,
    VERSION,
    Artifact,
    Manifest,
    read_manifest,
    read_npz_artifact,
)
from ddnn.core.roles import AGGREGATOR, CLOUD, Role, tier_input_format
from ddnn.nn.model import DDNN, DeviceSlice, UpperTier, build_model
from ddnn.nn.pack import NotPackable, pack_slice, pack_tier
from ddnn.packed.format import SUFFIX as PACKED_SUFFIX
from ddnn.packed.format import PackedModel, packable, write_packed


def weight_prefixes(cfg: ModelConfig) -> dict[Role, list[str]]:
    """Each role of an export -> the prefixes of its weights in the whole model's state dict
    (the aggregator's artifact exists, empty of weights, also where its fusions have none)."""
    out = {Role.device(i): [f"device_slices.{i}."] for i in range(cfg.n_devices)}
    out[AGGREGATOR] = ["local.", "edge_exit.", "routers."]
    if cfg.edge is not None:
        out.update({Role.edge(e): [f"edges.{e}."] for e in range(len(cfg.edge.groups))})
    if cfg.cloud is not None:
        out[CLOUD] = ["cloud."]
    return out


def _export_packed(model: DDNN, cfg: ModelConfig, out: Path) -> dict[str, Artifact]:
    """Each device's slice in the bit-packed format as well (`device-<i>.bits`, see
    ddnn/packed/format.py), where the slice packs: a binary device tier with an exit head;
    and each upper tier that packs (`edge-<e>.bits`, `cloud.bits`, ddnn/packed/tier.py): a
    binary tier on binary maps, fused by CC or MP, without hidden FC blocks. A slice or tier
    that fails the exactness checks of packing is left to the torch runtime, with a warning;
    one that cannot pack at all is left to it silently (its runtime says why on request)."""
    parts: list[tuple[Role, nn.Module, Callable[[], PackedModel]]] = []
    if packable(cfg) is None:
        for i, s in enumerate(model.device_slices):
            parts.append((Role.device(i), s, lambda s=s: pack_slice(s, cfg.input_shape)))
    for e, edge in enumerate(model.edges):
        if cfg.device_feature_format == "binary":
            parts.append((Role.edge(e), edge, lambda edge=edge: pack_tier(edge)))
    if model.cloud is not None and tier_input_format(cfg, CLOUD) == "binary":
        parts.append((CLOUD, model.cloud, lambda: pack_tier(model.cloud)))
    packed = {}
    for role, module, pack in parts:
        was_training = module.training
        module.eval()  # what the services run: batch norm on its running statistics
        try:
            bits = pack()
        except NotPackable as e:
            if role.tier == "device":
                warnings.warn(f"{role} is exported for the torch runtime only: {e}", stacklevel=2)
            continue
        finally:
            module.train(was_training)
        path = out / f"{role}{PACKED_SUFFIX}"
        write_packed(path, bits)
        packed[role] = Artifact.of(path)
    return packed


def _export_folder(out: Path, force: bool) -> None:
    """Make `out` ready for an export: created if need be; an existing folder must be empty
    or an earlier export (it holds a manifest, whatever else an export writes), or `force`
    given: an export into /etc once wrote its artifacts and an `access/` folder among the
    system's files without a word, replacing any of the same name."""
    if out.exists() and not out.is_dir():
        raise DDNNError(f"cannot export into {out}: it is a file, not a folder")
    try:
        foreign = out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir())
    except OSError as e:
        raise DDNNError(f"cannot export into {out}: {reason(e)}") from None
    if foreign and not force:
        raise DDNNError(
            f"{out} is not empty and holds no earlier export (no {MANIFEST}): export into "
            "a new or empty folder, or pass --force to write the export's files among the "
            "others (replacing those of the same names, deleting none)"
        )
    make_folder(out, "export folder")


def export(
    model: DDNN,
    cfg: DDNNConfig,
    out: Path | str,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> Manifest:
    """Write every role's artifact and the manifest into `out` (created if needed): a new or
    empty folder, or an earlier export, whose files of the same names are replaced; any
    other folder only with `force` (`_export_folder`). Other files are never deleted."""
    out = Path(out)
    _export_folder(out, force)
    try:
        return _write_export(model, cfg, out, meta)
    except OSError as e:  # a full disk, a folder of an artifact's name in the way, ...
        where = f"{e.filename}: " if e.filename else ""
        raise DDNNError(f"cannot write the export into {out}: {where}{reason(e)}") from None


def _write_export(model: DDNN, cfg: DDNNConfig, out: Path, meta: dict[str, Any] | None) -> Manifest:
    """`export`'s files, into the folder made ready for them."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    artifacts = {}
    for role, prefixes in weight_prefixes(cfg.model).items():
        arrays = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
        path = out / f"{role}.npz"
        with path.open("wb") as f:
            np.savez(f, **arrays)
        artifacts[role] = Artifact.of(path)
    packed = _export_packed(model, cfg.model, out)
    config = cfg.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for role in sorted(artifacts):
        digest.update(artifacts[role].sha256.encode())
    for role in sorted(packed):
        digest.update(f"packed:{packed[role].sha256}".encode())
    from ddnn.nn.bounds import observed_bounds  # here: bounds runs evaluate, which imports us

    bounds = observed_bounds(model, cfg, meta or {})
    if bounds:  # what the aggregator accepts is part of what the version names
        digest.update(f"bounds:{json.dumps(bounds, sort_keys=True)}".encode())
    manifest = Manifest(
        format=FORMAT,
        version=VERSION,
        model_version=digest.hexdigest()[:12],
        config=config,
        artifacts=artifacts,
        software={
            "ddnn": ddnn.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        meta=meta or {},
        packed=packed,
        score_bounds=bounds,
    )
    with replaced(out / MANIFEST) as tmp:
        tmp.write_text(manifest.model_dump_json(indent=2))
    return manifest


def _load_into(model: DDNN, arrays: dict[str, np.ndarray], prefixes: list[str], where: str) -> None:
    """Load the arrays under `prefixes` into `model`, refusing missing or extra weights."""
    expected = {k for k in model.state_dict() if k.startswith(tuple(prefixes))}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ModelFileError(
            f"{where} does not match the manifest's topology (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    state = model.state_dict()
    for k, v in arrays.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ModelFileError(
                f"{where}: weight {k} has shape {v.shape}, the topology needs "
                f"{tuple(state[k].shape)}"
            )
        state[k] = torch.from_numpy(v)
    model.load_state_dict(state)


def _load_roles(directory: Path | str, wanted: list[str] | None) -> tuple[Manifest, DDNN]:
    """A model skeleton with the weights of the `wanted` roles (None: every artifact's)
    loaded; the rest untouched: callers hand out only the loaded parts."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    wanted = list(manifest.artifacts) if wanted is None else wanted
    try:
        cfg = manifest.ddnn_config()
    except ConfigError as e:
        raise ModelFileError(f"{directory / MANIFEST}: {e}") from None
    model = build_model(cfg)
    prefixes = weight_prefixes(cfg.model)
    for role in wanted:
        if role not in prefixes:
            raise ModelFileError(f"this deployment has no role {role!r}; it has {sorted(prefixes)}")
        arrays = read_npz_artifact(directory, manifest, role)
        _load_into(model, arrays, prefixes[role], f"{directory / manifest.artifacts[role].file}")
    model.eval()
    return manifest, model


def load_device(directory: Path | str, device: int) -> tuple[Manifest, DeviceSlice]:
    manifest, model = _load_roles(directory, [Role.device(device)])
    return manifest, model.device_slices[device]


def load_edge(directory: Path | str, edge: int) -> tuple[Manifest, UpperTier]:
    manifest, model = _load_roles(directory, [Role.edge(edge)])
    return manifest, model.edges[edge]


def load_cloud(directory: Path | str) -> tuple[Manifest, UpperTier]:
    manifest, model = _load_roles(directory, [CLOUD])
    if model.cloud is None:
        raise ModelFileError(f"the deployment in {directory} has no cloud tier")
    return manifest, model.cloud


def load_exported_model(directory: Path | str) -> tuple[DDNN, DDNNConfig, Manifest]:
    """The whole model assembled from every artifact: offline evaluation of exactly what
    the live services run."""
    manifest, model = _load_roles(directory, None)
    return model, manifest.ddnn_config(), manifest
