"""The packed file format, and what is not packed: encodings round trip, corruption is refused
by the decoder and by a device, a head's formula and overrides survive encoding, tiers and
slices that are not binary stay on torch, and exports stay reproducible (ddnn/packed/format.py,
ddnn/nn/pack.py)."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from cloud.runtime import open_tier
from ddnn.core.config import load_config
from ddnn.core.errors import ModelFileError
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import Role
from ddnn.nn.export import export, load_device
from ddnn.nn.model import DDNN, DeviceSlice, UpperTier
from ddnn.nn.pack import NotPackable, pack_slice, pack_tier
from ddnn.nn.runtime import TorchSlice, TorchTier
from ddnn.packed.format import FORMAT_VERSION, decode, encode, read_packed, write_packed
from ddnn.packed.kernels import head_dots, runner
from devices.runtime import PackedSlice, open_slice
from tests.packing import KERNELS, random_bn, same_bits, untrained_slice

# --- format, refusals ---------------------------------------------------------------------


def test_encoding_round_trips_and_corruption_is_refused(tmp_path):
    packed = pack_slice(untrained_slice(["model.device.conv_filters=[4, 2]"]), (3, 32, 32))
    data = encode(packed)
    again = decode(data)
    assert encode(again) == data
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32)).astype(np.float32)
    assert same_bits(runner(packed, "numpy")(x)[0], runner(again, "numpy")(x)[0])
    flipped = bytearray(data)
    flipped[40] ^= 0x10
    with pytest.raises(ModelFileError, match="corrupt"):
        decode(bytes(flipped))
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        decode(data[:-40])
    with pytest.raises(ModelFileError, match="not a packed DDNN slice"):
        decode(b"PK\x03\x04" + data[4:])
    newer = bytearray(data)
    newer[8:10] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    with pytest.raises(ModelFileError, match="version"):
        decode(bytes(newer))
    # A NaN parameter in an intact file (its hash recomputed): refused on load, not on the
    # device's first frame.
    poisoned = copy.deepcopy(packed)
    poisoned.head.beta[0] = np.nan
    with pytest.raises(ModelFileError, match="NaN parameter"):
        decode(encode(poisoned))
    for kernel in KERNELS:
        with pytest.raises(ValueError, match="shape"):
            runner(packed, kernel)(x[:, :16])
    path = tmp_path / "s.bits"
    write_packed(path, packed)
    assert read_packed(path).weights_bytes == packed.weights_bytes


def test_the_head_formula_mode_and_overrides_survive_encoding():
    """A head whose batch norm rounds twice (torch without FMA) and one override: both
    kernels apply them, and the file keeps them."""
    packed = pack_slice(untrained_slice(), (3, 32, 32))
    x = np.random.default_rng(5).uniform(0, 255, (3, 32, 32)).astype(np.float32)
    dots = head_dots_of(packed, x)
    head = packed.head
    head.mode = "mul_add"
    head.beta = (head.beta.astype(np.float64) + 0.5).astype(np.float32)
    head.override_class = np.array([2], np.uint16)
    head.override_dot = np.array([dots[2]], np.int32)
    head.override_score = np.array([123.5], np.float32)
    want = dots.astype(np.float32) * head.alpha + head.beta
    want[2] = 123.5
    again = decode(encode(packed))
    assert again.head.mode == "mul_add" and list(again.head.override_dot) == [dots[2]]
    for model in (packed, again):
        for kernel in KERNELS:
            assert same_bits(runner(model, kernel)(x)[0], want)


def head_dots_of(packed, x: np.ndarray) -> np.ndarray:
    return head_dots(packed.head, runner(packed, "numpy")(x)[1])


def test_a_corrupt_packed_artifact_is_refused_by_the_device(tmp_path):
    model, cfg = DDNN(load_config().model), load_config()
    random_bn(model, 0)
    export(model.eval(), cfg, tmp_path)
    manifest = read_manifest(tmp_path)
    path = tmp_path / manifest.packed["device-1"].file
    blob = bytearray(path.read_bytes())
    blob[20] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="does not match its hash"):
        PackedSlice(tmp_path, 1)
    PackedSlice(tmp_path, 0)  # the other devices are intact
    proc = subprocess.run(
        [sys.executable, "-m", "ddnn", "device", "--artifacts", str(tmp_path), "--id", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "does not match its hash" in proc.stderr


# --- what is not packed, reproducible exports ---------------------------------------------


def test_a_tier_that_is_not_binary_after_its_fusion_stays_on_torch(tmp_path):
    for tier, why in [
        (UpperTier("AP", 3, (4, 8, 8), [8], [], "binary", 3), "AP fusion"),
        (UpperTier("CC", 3, (4, 8, 8), [8], [16], "binary", 3), "hidden FC"),
        (UpperTier("CC", 3, (4, 8, 8), [8], [], "float", 3), "binary"),
    ]:
        with pytest.raises(NotPackable, match=why):
            pack_tier(tier.eval())
    cfg = load_config(overrides=["model.cloud.aggregation=AP"])
    manifest = export(DDNN(cfg.model).eval(), cfg, tmp_path)
    assert "cloud" not in manifest.packed and "device-0" in manifest.packed
    assert isinstance(open_tier(tmp_path, Role("cloud")), TorchTier)
    with pytest.raises(ModelFileError, match="no packed form of cloud"):
        open_tier(tmp_path, Role("cloud"), "packed")


def test_a_float_device_tier_is_not_packed_and_keeps_the_torch_runtime(tmp_path):
    cfg = load_config(overrides=["model.device.precision=float"])
    model = DDNN(cfg.model).eval()
    with pytest.raises(NotPackable, match="binary"):
        pack_slice(model.device_slices[0], (3, 32, 32))
    manifest = export(model, cfg, tmp_path)
    assert manifest.packed == {}  # the cloud's inputs are float maps too
    with pytest.raises(ModelFileError, match="precision 'float'"):
        PackedSlice(tmp_path, 0)
    assert isinstance(open_slice(tmp_path, 0), TorchSlice)


def test_exports_stay_reproducible_and_versioned(tmp_path):
    model = DDNN(load_config().model)
    random_bn(model, 4)
    model.eval()
    a = export(model, load_config(), tmp_path / "a")
    b = export(model, load_config(), tmp_path / "b")
    assert a.model_version == b.model_version and a.packed == b.packed
    _, device = load_device(tmp_path / "a", 3)  # the .npz artifacts load as before
    assert isinstance(device, DeviceSlice)
