import numpy as np
import pytest
import torch

from ddnn.core.payloads import pack_features, unpack_codes
from ddnn.nn.layers import (
    FC,
    ConvP,
    KBit,
    QuantConv2d,
    SteSign,
    clip_quantized_weights,
    pooled_size,
    ste_sign,
)


def test_sign_forward_is_plus_minus_one_with_sign_zero_plus_one():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0])
    assert ste_sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_ste_passes_gradient_only_where_abs_x_at_most_one():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    ste_sign(x).backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.0]


def test_binary_conv_uses_signed_weights_in_forward_and_reaches_latent_weights():
    conv = QuantConv2d(1, 1, SteSign())
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-0.8, 0.8, 9).view(1, 1, 3, 3))
    x = torch.ones(1, 1, 3, 3)
    y = conv(x)
    # centre output sees all nine weights: four -1, five +1 (0 maps to +1)
    assert y[0, 0, 1, 1].item() == 1.0
    y.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_weight_clipping_clips_in_place():
    block = ConvP(3, 4)
    with torch.no_grad():
        block.conv.weight.mul_(100.0)
    assert block.conv.weight.abs().max() > 1
    clip_quantized_weights(block)
    assert block.conv.weight.abs().max() <= 1.0


def test_float_layers_are_not_clipped():
    block = ConvP(3, 4, precision="float")
    with torch.no_grad():
        block.conv.weight.fill_(5.0)
    clip_quantized_weights(block)
    assert block.conv.weight.max().item() == 5.0


def test_convp_halves_spatial_size_and_outputs_binary_values():
    block = ConvP(3, 4)
    y = block(torch.rand(2, 3, 32, 32) * 255)
    assert y.shape == (2, 4, 16, 16)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    assert pooled_size(32, 1) == 16 and pooled_size(32, 3) == 4 and pooled_size(7, 1) == 4


def test_fc_head_gives_real_scores_hidden_fc_gives_binary():
    head, hidden = FC(16, 3, activation=False), FC(16, 5)
    x = torch.randn(4, 16)
    assert not set(head(x).unique().tolist()) <= {-1.0, 1.0}
    assert set(hidden(x).unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("bits", [2, 4])
def test_kbit_quantizer_has_2_to_the_k_levels_and_a_clipped_straight_through_gradient(bits):
    """The hybrid-precision paper's eq. (1): [-1, 1] onto 2^k evenly spaced values, the ends
    included."""
    x = torch.linspace(-1.5, 1.5, 301, requires_grad=True)
    q = KBit(bits)(x)
    z = 2**bits - 1
    assert torch.allclose(q.unique(), torch.linspace(-1, 1, z + 1), atol=1e-6)
    assert len(q.unique()) == 2**bits
    assert (q - x.clamp(-1, 1)).abs().max() <= 1 / z + 1e-6  # the nearest level
    q.sum().backward()
    assert torch.equal(x.grad, (x.abs() <= 1).float())


def test_kbit_weights_are_scaled_by_the_mean_absolute_weight_of_each_filter():
    """XNOR-Net's alpha, the hybrid-precision paper's eq. (2)."""
    w = torch.tensor([[0.9, -0.1, 0.5, -0.3], [0.05, 0.05, -0.05, 0.05]])
    q = KBit(2, scaled=True)(w)
    alpha = w.abs().mean(dim=1, keepdim=True)
    assert torch.allclose(q, KBit(2)(w) * alpha)


@pytest.mark.parametrize("precision", ["2bit", "4bit"])
def test_a_kbit_blocks_output_crosses_the_wire_bit_for_bit(precision):
    """What a k-bit device computes, packed at k bits per value and unpacked by the tier
    above, is the same float32 values: live equals offline."""
    block = ConvP(3, 4, precision=precision).eval()
    with torch.no_grad():
        y = block(torch.rand(2, 3, 32, 32) * 255).numpy()
    bits = int(precision[0])
    assert len(np.unique(y)) <= 2**bits
    payload = pack_features(y, precision)
    assert len(payload) == y.size * bits // 8
    assert np.array_equal(unpack_codes(payload, y.shape, bits).view(np.uint32), y.view(np.uint32))
