"""The packed kernels on untrained slices and tiers made to hit their edge cases: negative and
zero gammas, deeper and odd-shaped slices, thresholds exactly on reachable sums, the compiled
kernel near thresholds, and either binary fusion (ddnn/packed/kernels.py, ddnn/packed/tier.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnn.core.config import load_config
from ddnn.nn.model import UpperTier
from ddnn.nn.pack import pack_slice
from ddnn.packed.kernels import conv_real, runner
from tests.packing import (
    KERNELS,
    assert_exact,
    assert_tier_exact,
    random_bn,
    same_bits,
    torch_outputs,
    untrained_slice,
)


@pytest.mark.parametrize(
    "overrides",
    [
        None,
        ["model.device.conv_filters=[4, 2]"],
        ["model.device.conv_filters=[6, 5, 3]"],
        ["model.device.conv_filters=[8, 3]", "model.input_shape=[1, 31, 20]"],  # grey, odd
    ],
)
def test_negative_and_zero_gamma_and_deeper_slices_are_exact(overrides):
    module = untrained_slice(overrides)
    shape = load_config(overrides=overrides).model.input_shape
    packed = pack_slice(module, shape)
    assert len(packed.convs) == len(module.blocks)
    assert (packed.convs[0].direction == -1).any()  # gamma < 0 flips the comparison
    rng = np.random.default_rng(1)
    real = rng.uniform(0, 255, (40, *shape)).astype(np.float32)
    integer = np.round(real[:20])  # camera frames: uint8 pixels
    x = np.concatenate([real, integer])
    features = torch_outputs(module, x)[1]
    assert 0.1 < (features > 0).mean() < 0.9  # the thresholds cut through the data
    assert_exact(packed, module, x)


def test_thresholds_exactly_at_reachable_sums_round_as_torch_does():
    """Batch norm centred exactly on pre-activations that occur, so that some of them land
    on the sign flip itself (BN(x) = 0 there, and sign(0) = +1)."""
    module = untrained_slice(["model.device.conv_filters=[4, 3]"])
    rng = np.random.default_rng(2)
    x = np.round(rng.uniform(0, 255, (30, 3, 32, 32))).astype(np.float32)  # exact sums
    block0, block1 = module.blocks
    with torch.no_grad():
        pooled = torch.nn.functional.max_pool2d(block0.conv(torch.from_numpy(x)), 3, 2, 1)
        for bn, values in ((block0.bn, pooled), (block1.bn, None)):
            bn.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -2.0])[: bn.num_features])
            bn.bias.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            if values is not None:
                bn.running_mean.copy_(values[0, :, 3, 3])
            else:
                bn.running_mean.copy_(torch.tensor([0.0, 2.0, -4.0])[: bn.num_features])
    packed = pack_slice(module, (3, 32, 32))
    assert_exact(packed, module, x)


def test_the_compiled_kernel_decides_near_threshold_sums_exactly():
    """Real-valued pixels, thresholds placed on exact (float64) pooled sums: the compiled
    kernel's float32 sums cannot call these, so it must fall back to exact ones and agree
    with the NumPy path, which sums exactly throughout."""
    if "numba" not in KERNELS:
        pytest.skip("numba is not installed")
    module = untrained_slice()
    packed = pack_slice(module, (3, 32, 32))
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.uniform(0, 255, (3, 32, 32)).astype(np.float32)
        pre = conv_real(packed.convs[0], x)
        conv = packed.convs[0]
        conv.direction[:] = rng.choice([-1, 1], conv.filters)
        # a pooled value, as float32 (exact sums are rarely float32: both sides of it occur)
        conv.threshold[:] = [pre[f].ravel()[rng.integers(pre[f].size)] for f in range(conv.filters)]
        conv.threshold[:] *= conv.direction
        a, b = runner(packed, "numpy")(x), runner(packed, "numba")(x)
        assert same_bits(a[1], b[1]) and same_bits(a[0], b[0])


@pytest.mark.parametrize("scheme", ["CC", "MP"])
def test_packed_tiers_of_either_binary_fusion_are_exact_off_their_defaults(scheme):
    torch.manual_seed(3)
    tier = UpperTier(scheme, 3, (4, 8, 8), [8, 8], [], "binary", 3).eval()
    random_bn(tier, seed=3, scale=40.0)
    assert_tier_exact(tier, maps_per_pattern=10, seed=3)
