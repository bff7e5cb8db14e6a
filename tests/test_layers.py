import torch

from ddnn.nn.layers import FC, ConvP, QuantConv2d, clip_quantized_weights, pooled_size, ste_sign


def test_sign_forward_is_plus_minus_one_with_sign_zero_plus_one():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0])
    assert ste_sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_ste_passes_gradient_only_where_abs_x_at_most_one():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    ste_sign(x).backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.0]


def test_binary_conv_uses_signed_weights_in_forward_and_reaches_latent_weights():
    conv = QuantConv2d(1, 1)
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
