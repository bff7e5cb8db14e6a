"""Energy per sample and tier (ddnn/core/energy.py), counted by hand on a tiny network:
2 devices, 1x4x4 frames, one binary ConvP block of 2 filters and a head of 3 classes each;
the local exit fuses by MP; the cloud concatenates the 2x2x2 maps into 4 channels, one
binary ConvP block of 4 filters, its head."""

from __future__ import annotations

import numpy as np
import pytest

from ddnn.core.config import load_config
from ddnn.core.energy import PJ, Ops, energy_uj, tier_ops

TINY = [
    "model.n_devices=2",
    "model.input_shape=[1, 4, 4]",
    "model.device.conv_filters=[2]",
    "model.cloud.conv_filters=[4]",
]


def pj(ops: Ops) -> float:
    return (
        ops.mac1 * PJ["mac1"]
        + ops.mac32 * PJ["mac32"]
        + ops.add32 * PJ["add32"]
        + (ops.bits * PJ["bits"])
    )


def test_the_counts_of_a_tiny_network_by_hand():
    parts = tier_ops(load_config(overrides=TINY).model)
    # device block: 2 filters x 1 channel x 9 taps x 16 positions on pixels = 288 signed
    # additions; pooled 2x2x2 = 8 outputs, 8 comparisons each + 1 threshold each = 72;
    # reads 18 weight bits, 2 thresholds of 32 bits, 16 pixels of 8 bits
    assert parts["device"] == Ops(mac1=0, mac32=0, add32=288 + 72, bits=18 + 64 + 128)
    # head: 8 +-1 features x 3 classes, batch norm per class; 24 weight bits, 3 x 2 x 32
    # parameter bits, 8 input bits
    assert parts["device_head"] == Ops(mac1=24, mac32=3, add32=0, bits=24 + 192 + 8)
    # MP over 2 devices' 3 scores, then the entropy's 3 terms
    assert parts["local"] == Ops(mac1=0, mac32=3, add32=3, bits=0)
    # cloud: CC costs nothing; block 4 filters x 4 channels x 9 x 4 positions = 576 binary
    # MACs; pooled to 1x1: 4 x 8 comparisons + 4 thresholds; head 4 x 3 binary MACs
    block = Ops(mac1=576, mac32=0, add32=36, bits=144 + 128 + 16)
    head = Ops(mac1=12, mac32=3, add32=0, bits=12 + 192 + 4)
    assert parts["cloud"] == block + head
    assert parts["cloud"].microjoules == pytest.approx(1403.8e-6)


def test_kbit_tiers_by_hand():
    """A 2-bit device tier and a 4-bit cloud: k-bit products counted bit-serially."""
    parts = tier_ops(load_config(overrides=[*TINY, "model.device.precision=2bit",
                                            "model.cloud.precision=4bit"]).model)  # fmt: skip
    # device block on pixels: 288 products of a 2-bit weight, 2 shift-adds each; 8 x 8 pool
    # comparisons; batch norm and quantization of 8 outputs as 32-bit MACs; 18 x 2 weight
    # bits, 2 x 64 parameter bits, 128 pixel bits
    assert parts["device"] == Ops(mac1=0, mac32=8, add32=576 + 64, bits=36 + 128 + 128)
    # head: 24 products of 2-bit weights and 2-bit features, 4 binary MACs each
    assert parts["device_head"] == Ops(mac1=96, mac32=3, add32=0, bits=48 + 192 + 16)
    # cloud block: 576 products of 4-bit weights and 2-bit maps (8 binary MACs each), 4 x 8
    # comparisons, 4 outputs normalized; head 12 products of 4-bit by 4-bit (16 each)
    block = Ops(mac1=576 * 8, mac32=4, add32=32, bits=144 * 4 + 256 + 16 * 2)
    head = Ops(mac1=12 * 16, mac32=3, add32=0, bits=12 * 4 + 192 + 4 * 4)
    assert parts["cloud"] == block + head


def test_a_sample_pays_for_the_tiers_it_reached():
    model = load_config(overrides=TINY).model
    present = np.array([[True, True], [True, False]])
    exit_index = np.array([0, 1])  # the first leaves at the local exit, the second at the cloud
    e = energy_uj(model, present, exit_index, ["local", "cloud"])
    device = 849.0 + 578.6  # pJ: the block and the head, from the counts above
    local = np.array([2 * device + 16.5, device + 16.5])
    cloud = np.array([0.0, 1403.8])
    assert e["local"] == pytest.approx(local.mean() * 1e-6, abs=1e-4)
    assert e["cloud"] == pytest.approx(cloud.mean() * 1e-6, abs=1e-4)
    assert e["edge"] == 0.0
    assert e["total"] == pytest.approx((local + cloud).mean() * 1e-6, abs=1e-4)
    # float32 everywhere, no exits, both devices: 2 x 3499.2 + 17965.8 pJ
    assert e["float_reference"] == pytest.approx(24964.2e-6, abs=1e-4)
    assert e["reduction"] == pytest.approx(24964.2 / ((local + cloud).mean()), rel=0.01)


def test_edges_are_paid_for_by_the_samples_that_reach_them():
    model = load_config(overrides=[*TINY, "model.edge={groups: [[0], [1]]}"]).model
    parts = tier_ops(model)
    present = np.array([[True, False], [True, True]])
    e = energy_uj(model, present, np.array([1, 1]), ["local", "edge", "cloud"])
    one_edge = pj(parts["edge"]) + pj(parts["edge_head"])
    edges = np.array([one_edge, 2 * one_edge]) + pj(parts["edge_exit"])
    assert e["edge"] == pytest.approx(edges.mean() * 1e-6, abs=1e-4)
    assert e["cloud"] == 0.0
