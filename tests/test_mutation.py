"""Mutated model files: every `.bits` slice, model file and manifest that is not intact is
refused with a `ModelFileError` (or `ConfigError`) naming the problem, never a traceback,
and one that loads runs a frame to finite scores.

Two kinds of mutation: bytes changed at random (the hash or the container catches most), and
changes under an intact hash (a buggy or hostile exporter: the structure must be checked
field by field). The default run mutates a few hundred files; the slow run the issue's
10,000 slices and 1,000 model files and manifests.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ddnn.core.errors import ConfigError, ModelFileError
from ddnn.core.manifest import read_manifest
from ddnn.nn.checkpoint import load_model
from ddnn.ops.faults.hostile import ODD_VALUES
from ddnn.packed.format import decode
from ddnn.packed.kernels import runner

DIGEST = 32  # the SHA-256 at the end of a .bits file


def mutated(data: bytes, rng: random.Random) -> bytes:
    """`data` with bytes changed, cut or added."""
    how = rng.randrange(4)
    if how == 0:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if how == 1:
        return data[: rng.randrange(len(data))]
    if how == 2:
        at = rng.randrange(len(data))
        return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 16) :]


def rehashed(data: bytes, rng: random.Random) -> bytes:
    """A mutated body of a `.bits` file under a correct hash of it."""
    body = mutated(data[:-DIGEST], rng) or b"x"
    return body + hashlib.sha256(body).digest()


def runs_to_finite_scores(model) -> None:
    c, h, w = model.input_shape
    if c * h * w > 3 * 64 * 64:
        return  # a slice for frames far larger than the tiny model's: not run here
    image = np.random.default_rng(0).uniform(0, 255, (c, h, w)).astype(np.float32)
    scores, _ = runner(model, "numpy")(image)
    assert scores.shape == (model.head.out_features,)
    assert np.isfinite(scores).all(), scores


@pytest.mark.parametrize("count", [400, pytest.param(10_000, marks=pytest.mark.slow)])
def test_mutated_bits_files_are_refused_or_run(plain: Path, count: int) -> None:
    original = (plain / "device-0.bits").read_bytes()
    rng = random.Random(count)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(count):
        data = rehashed(original, rng) if i % 2 else mutated(original, rng)
        try:
            model = decode(data, "device-0.bits")
        except ModelFileError as e:
            assert "device-0.bits" in str(e)
            outcomes["refused"] += 1
            continue
        runs_to_finite_scores(model)
        outcomes["loaded"] += 1
    assert outcomes["refused"] > count // 2  # most mutations break the file visibly


def odd_payload(payload: dict, rng: random.Random) -> dict:
    """The model file's dict with one field somewhere replaced by an odd value, deleted,
    or one added."""
    where = payload
    keys = [k for k in ("config", "meta") if isinstance(payload.get(k), dict)]
    if keys and rng.random() < 0.7:
        where = payload[rng.choice(keys)]
        while rng.random() < 0.5 and (inner := [v for v in where.values() if isinstance(v, dict)]):
            where = rng.choice(inner)
    if not where or rng.random() < 0.2:
        where[rng.choice(["extra", "format", "version", "state_dict"])] = rng.choice(ODD_VALUES)
    elif rng.random() < 0.25:
        del where[rng.choice(list(where))]
    else:
        where[rng.choice(list(where))] = rng.choice(ODD_VALUES)
    return payload


@pytest.mark.parametrize("count", [60, pytest.param(1000, marks=pytest.mark.slow)])
def test_mutated_model_files_are_refused_with_a_clear_error(
    tiny: Path, tmp_path: Path, count: int
) -> None:
    original = tiny.read_bytes()
    rng = random.Random(count)
    path = tmp_path / "m.pt"
    loaded = 0
    for i in range(count):
        if i % 2:
            payload = torch.load(io.BytesIO(original), weights_only=True)
            buffer = io.BytesIO()
            torch.save(odd_payload(payload, rng), buffer)
            path.write_bytes(buffer.getvalue())
        else:
            path.write_bytes(mutated(original, rng))
        try:
            load_model(path)
            loaded += 1
        except ModelFileError as e:
            assert str(path) in str(e) or "config" in str(e), e
    assert loaded < count


@pytest.mark.parametrize("count", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_mutated_manifests_are_refused_with_a_clear_error(
    plain: Path, tmp_path: Path, count: int
) -> None:
    original = (plain / "manifest.json").read_bytes()
    rng = random.Random(count)
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / "manifest.json"
    for i in range(count):
        if i % 2:
            fields = json.loads(original)
            where = fields if rng.random() < 0.4 else fields.get("config", fields)
            key = rng.choice(list(where))
            value = rng.choice(ODD_VALUES)
            where[key] = None if isinstance(value, bytes) else value  # NaN, inf: JSON tokens
            path.write_text(json.dumps(fields))
        else:
            path.write_bytes(mutated(original, rng))
        try:
            manifest = read_manifest(path.parent)
            manifest.ddnn_config()
        except (ModelFileError, ConfigError) as e:
            assert str(e) and "Traceback" not in str(e)
