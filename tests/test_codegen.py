"""The device slice as generated C (ddnn/packed/codegen.py): compiled with the system gcc as
strict C99, bit for bit the packed runtime's scores and the wire's feature bits, on every
test sample of the tiny export and on slices of other shapes with hostile batch norms; and
on a Cortex-M3 and M4 under QEMU (ddnn/ops/mcu/run.py), where the tools are installed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from ddnn.core.config import load_config
from ddnn.core.payloads import pack_bits
from ddnn.nn.pack import pack_slice
from ddnn.ops.cslice import HostSlice, camera_test_frames
from ddnn.packed.format import PackedModel
from ddnn.packed.inspect import read_exported
from ddnn.packed.kernels import conv_real, head_dots, runner
from tests.helpers import ddnn, ddnn_json, missing_tool
from tests.packing import untrained_slice


def needs(*tools: str) -> None:
    if missing := [t for t in tools if shutil.which(t) is None]:
        missing_tool(f"needs {', '.join(missing)}")


def assert_same_as_packed(c: HostSlice, model: PackedModel, frames: np.ndarray) -> None:
    run = runner(model, "numpy")
    for i, frame in enumerate(frames):
        scores, bits = c(frame)
        want_scores, features = run(frame.astype(np.float32))
        assert np.array_equal(scores.view(np.uint32), want_scores.view(np.uint32)), i
        assert bits == pack_bits(features), i


def test_every_device_of_an_export_is_bit_exact_in_c_on_every_test_sample(plain, tmp_path):
    needs("gcc")
    report = ddnn_json("codegen", str(plain), "--out", str(tmp_path))
    assert [row["device"] for row in report["devices"]] == list(range(6))
    for device in range(6):
        model, _ = read_exported(plain, device)
        c = HostSlice(tmp_path / f"device-{device}", model)
        frames = camera_test_frames(plain, device, 10_000)
        assert len(frames) == 400
        assert_same_as_packed(c, model, frames)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.device.conv_filters=[4, 2]", "model.classes=[a, b, c, d, e]"],
        ["model.device.conv_filters=[6, 5, 3]"],
        ["model.device.conv_filters=[8, 3]", "model.input_shape=[1, 31, 20]"],  # grey, odd
        ["model.device.conv_filters=[40, 2]", "model.input_shape=[3, 9, 9]"],  # 2 words
        ["model.device.conv_filters=[2]", "model.input_shape=[5, 1, 1]"],  # one pixel
    ],
)
def test_slices_of_other_shapes_are_bit_exact_in_c(overrides, tmp_path):
    """Negative and zero gammas in every layer (tests/packing.py), uint8 frames with the
    extremes 0 and 255."""
    needs("gcc")
    shape = load_config(overrides=overrides).model.input_shape
    model = pack_slice(untrained_slice(overrides), shape)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (60, *shape), dtype=np.uint8)
    frames[0], frames[1] = 0, 255
    assert_same_as_packed(HostSlice.of(model, tmp_path), model, frames)


def test_first_block_thresholds_on_and_between_reachable_sums_decide_as_the_packed_runtime(
    tmp_path,
):
    """The first block's float32 thresholds become integers (ceil): placed exactly on pooled
    sums that occur, and half-way between two integers, in either direction."""
    needs("gcc")
    model = pack_slice(untrained_slice(["model.device.conv_filters=[4, 3]"]), (3, 32, 32))
    conv = model.convs[0]
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    pre = conv_real(conv, frames[0].astype(np.float32))
    padded = np.pad(pre, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pooled = sliding_window_view(padded, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(3, 4))
    conv.direction[:] = [1, -1, 1, -1]
    on_sums = [pooled[f].ravel()[rng.integers(pooled[f].size)] for f in range(conv.filters)]
    conv.threshold[:] = np.array(on_sums) * conv.direction + [0.0, 0.0, 0.5, -0.5]
    c = HostSlice.of(model, tmp_path)
    assert_same_as_packed(c, model, frames)


def test_the_heads_two_roundings_and_its_overrides_are_the_packed_runtimes(tmp_path):
    """The head's batch norm rounded twice (mode "mul_add") and a table of overrides: both
    paths of the generated head that trained slices seldom take."""
    needs("gcc")
    model = pack_slice(untrained_slice(["model.classes=[a, b, c, d]"]), (3, 32, 32))
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    head = model.head
    head.mode = "mul_add"
    features = runner(model, "numpy")(frames[0].astype(np.float32))[1]
    dots = head_dots(head, features)
    head.override_class = np.array([1, 3], np.uint16)
    head.override_dot = dots[[1, 3]].astype(np.int32)
    head.override_score = np.array([12.5, -0.25], np.float32)
    c = HostSlice.of(model, tmp_path / "mul_add")
    assert_same_as_packed(c, model, frames)
    assert list(c(frames[0])[0][[1, 3]]) == [12.5, -0.25]


def test_codegen_refuses_a_device_slice_that_is_not_binary(with_hybrid, tmp_path):
    """A 2-bit device tier packs into no bits: refused by name, nothing written."""
    proc = ddnn("codegen", str(with_hybrid), "--out", str(tmp_path / "c"), check=False)
    assert proc.returncode != 0
    assert "precision '2bit'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("core", ["cortex-m3", "cortex-m4"])
def test_the_slice_runs_bit_exact_on_a_cortex_m_within_16_kb_of_flash_and_4_kb_of_ram(plain, core):
    needs("arm-none-eabi-gcc", "qemu-system-arm")
    report = ddnn_json("inspect", str(plain), "--mcu", core, "--frames", "100")["mcu"]
    assert report["frames"] == 100 and report["exact"], report
    assert report["mismatched_frames"] == 0
    assert 0 < report["flash_bytes"] <= 16 * 1024, report
    assert 0 < report["ram_bytes"] <= 4 * 1024 and report["stack_bytes"] > 0, report
    # a frame is the conv's ~110k signed taps and more: a count that small would be no run
    assert report["instructions_per_frame"] > 110_000, report
