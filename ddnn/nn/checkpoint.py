"""Model files: the config, the weights and metadata, loaded without unpickling code.

A model file is a `torch.save` of plain containers (dicts, lists, strings, numbers, tensors)
and is read back with `weights_only=True`, so a file from an untrusted path cannot run code.
The file records a format name and version; anything else is refused with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddnn.core.config import DDNNConfig, validate_config
from ddnn.core.errors import ConfigError, ModelFileError
from ddnn.core.files import replaced
from ddnn.nn.model import DDNN, build_model

FORMAT = "ddnn-model"
VERSION = 1


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none. Of
    torch's refusal to unpickle more than plain data, only what it found: its first line
    advises loading the file with `weights_only=False`, which could run the file's code."""
    text = str(e).strip()
    _, refused, found = text.partition("WeightsUnpickler error:")
    if refused and found.strip():
        return f"not plain saved tensors and containers ({found.strip().splitlines()[0]})"
    return text.splitlines()[0] if text else type(e).__name__


def save_model(path: Path | str, model: DDNN, cfg: DDNNConfig, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.model_dump(mode="json"),
        "state_dict": model.state_dict(),
        "meta": meta,
    }
    with replaced(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: Path | str) -> tuple[DDNN, DDNNConfig, dict[str, Any]]:
    """Load a model file written by `save_model`; raises ModelFileError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileError(
            f"{path} is a folder, not a model file (`ddnn train --out` writes one)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file makes the unpickler raise anything
        # (UnpicklingError, BadZipFile, RuntimeError, EOFError, UnicodeDecodeError, ...)
        raise ModelFileError(
            f"{path} is not a readable DDNN model file: {_first_line(e)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a DDNN model file (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise ModelFileError(
            f"{path} has model file version {payload.get('version')!r}; this ddnn reads "
            f"version {VERSION}"
        )
    try:
        cfg = validate_config(payload["config"], source=f"config in {path}")
    except (ConfigError, KeyError) as e:
        raise ModelFileError(str(e)) from None
    model = build_model(cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: weights do not match its config: {_first_line(e)}") from None
    model.eval()
    meta = payload.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise ModelFileError(f"{path}: its metadata is not a map of names to values")
    for key in ("data", "grid"):
        if key in meta and not isinstance(meta[key], str):
            raise ModelFileError(f"{path}: metadata {key!r} is not a string: {meta[key]!r:.40}")
    return model, cfg, dict(meta)
