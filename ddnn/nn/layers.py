"""Binarized building blocks of a DDNN: the fused ConvP and FC blocks of the paper (Fig. 3).

A block's precision is a per-tier setting, not a property baked into the layer: the same `ConvP` is
binary on an end device and may be 2-bit, 4-bit or float in the cloud (the hybrid-precision paper's
hybrid networks). Quantizers are objects passed to the layers (larq-style): `SteSign` (binary),
`KBit` (the hybrid-precision paper's eq. (1)-(3), weights scaled by XNOR-Net's alpha), or none.

Conventions every runtime must share (training, export, a packed bit runtime):
- sign(x) = +1 for x >= 0 and -1 otherwise (so sign(0) = +1);
- conv padding is zero padding, i.e. "no evidence", neither +1 nor -1;
- ConvP is conv -> max-pool -> batch norm -> activation, in that order, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddnn.core.config import Precision, pooled_size  # noqa: F401 (pooled_size: re-exported)


class _SignSTE(torch.autograd.Function):
    """sign() forward; clipped straight-through estimator backward (BinaryNet, eBNN)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        # Two in-place steps on a bool->float cast: about 3x faster on CPU than a where()
        # with scalar operands, and exactly +-1.0 (-0.0 >= 0 holds, so sign(-0.0) = +1 too).
        return (x >= 0).to(x.dtype).mul_(2).sub_(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarize to {-1, +1}; gradients pass where |x| <= 1 and are zeroed elsewhere. With
    no gradient to keep (inference), the same numbers without autograd's bookkeeping."""
    if not torch.is_grad_enabled():
        return (x >= 0).to(x.dtype).mul_(2).sub_(1)
    return _SignSTE.apply(x)


class _KBitSTE(torch.autograd.Function):
    """k-bit uniform quantization forward; clipped straight-through estimator backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        return kbit_values(kbit_codes(x, levels), levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype), None


def kbit_codes(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The hybrid-precision paper's eq. (1) with v0 = 1, v1 = 2, v2 = 1/2: x clipped to [-1, 1] onto
    Z + 1 = `levels` evenly spaced values; the integer code of each, 0 .. Z (what the wire carries,
    ddnn/core/payloads.py)."""
    z = levels - 1
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * (z / 2.0))


def kbit_values(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """The values of k-bit codes: code * (2 / Z) - 1, in float32 as the wire's decoding does."""
    return codes * (2.0 / (levels - 1)) - 1.0


class Quantizer:
    """A named, swappable quantizer (as larq's): what a layer applies to its weights or a
    block to its activations. `bits` is what one value costs in memory and on the wire."""

    name: str = "none"
    bits: int = 32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SteSign(Quantizer):
    """sign() to {-1, +1} with a clipped straight-through gradient (BinaryNet)."""

    name, bits = "ste_sign", 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ste_sign(x)


class KBit(Quantizer):
    """Uniform k-bit quantization of [-1, 1] (the hybrid-precision paper, eq. (1) and (3)), clipped
    straight-through gradient. `scaled`: times the mean absolute latent value of each
    output channel, XNOR-Net's scaling factor alpha of eq. (2), for weights."""

    def __init__(self, bits: int, scaled: bool = False) -> None:
        self.bits, self.scaled = bits, scaled
        self.name = f"{bits}bit" + ("_scaled" if scaled else "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits
        if torch.is_grad_enabled():
            q = _KBitSTE.apply(x, levels)
        else:
            q = kbit_values(kbit_codes(x, levels), levels)
        if not self.scaled:
            return q
        alpha = x.abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return q * alpha


class ReLU(Quantizer):
    """The activation of a float tier (not a quantizer: values stay 32-bit)."""

    name = "relu"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


KBITS = {"2bit": 2, "4bit": 4}


def kernel_quantizer(precision: Precision) -> Quantizer:
    """The weight quantizer of a tier of the given precision."""
    if precision == "binary":
        return SteSign()
    if precision in KBITS:
        return KBit(KBITS[precision], scaled=True)
    return Quantizer()


def activation_quantizer(precision: Precision) -> Quantizer:
    """The activation of a tier of the given precision."""
    if precision == "binary":
        return SteSign()
    if precision in KBITS:
        return KBit(KBITS[precision])
    return ReLU()


class QuantConv2d(nn.Conv2d):
    """A conv whose weights pass through `kernel_quantizer` in the forward pass.

    The latent real weights are what the optimizer updates; `clip_quantized_weights` keeps
    them in [-1, 1] so that the straight-through estimator keeps working (BinaryNet).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_quantizer: Quantizer) -> None:
        super().__init__(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.kernel_quantizer = kernel_quantizer

    def quantized_weight(self) -> torch.Tensor:
        """The weights the forward pass uses (quantized by `kernel_quantizer`)."""
        return self.kernel_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.quantized_weight(), None, 1, 1)


class QuantLinear(nn.Linear):
    """A linear layer whose weights pass through `kernel_quantizer` in the forward pass."""

    def __init__(self, in_f: int, out_f: int, kernel_quantizer: Quantizer) -> None:
        super().__init__(in_f, out_f, bias=False)
        self.kernel_quantizer = kernel_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.kernel_quantizer(self.weight))


class ConvP(nn.Module):
    """Fused convolution-pool block: 3x3 conv (stride 1, pad 1) -> 3x3 max-pool (stride 2,
    pad 1) -> batch norm -> sign (binary) or ReLU (float). Halves height and width."""

    def __init__(self, in_ch: int, filters: int, precision: Precision = "binary") -> None:
        super().__init__()
        self.precision = precision
        self.conv = QuantConv2d(in_ch, filters, kernel_quantizer(precision))
        self.bn = nn.BatchNorm2d(filters)
        self._act = activation_quantizer(precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(conv_pool(x, self.conv.quantized_weight(), groups=1))

    def normalize(self, pooled: torch.Tensor) -> torch.Tensor:
        """The block after its max-pool: batch norm, then the activation."""
        return self._act(self.bn(pooled))


def conv_pool(x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """3x3 conv (stride 1, pad 1) then 3x3 max-pool (stride 2, pad 1).

    Channels-last memory: CPU max-pool is several times faster on it than on NCHW (measured:
    the pool took a quarter of a training step), and the results are the same numbers.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    return F.max_pool2d(F.conv2d(x, weight, None, 1, 1, 1, groups), 3, 2, 1)


def parallel_conv_p(blocks: Sequence[ConvP], x: torch.Tensor) -> torch.Tensor:
    """`len(blocks)` ConvP blocks side by side, block i on its own slice of x's channels:
    x (B, G*C, H, W) -> (B, G*f, H/2, W/2). One grouped conv instead of G small ones (the
    devices' slices train about twice as fast); the same numbers as each block alone."""
    weight = torch.cat([b.conv.quantized_weight() for b in blocks])
    pooled = conv_pool(x, weight, groups=len(blocks))
    parts = pooled.split(blocks[0].conv.out_channels, dim=1)
    return torch.cat([b.normalize(p) for b, p in zip(blocks, parts, strict=True)], dim=1)


class FC(nn.Module):
    """Fused fully connected block: linear -> batch norm -> sign (binary) or ReLU (float).

    With `activation=False` it is an exit head: the batch-normed linear output is the vector
    of class scores (real-valued, so that softmax and entropy are meaningful).
    """

    def __init__(
        self, in_f: int, out_f: int, precision: Precision = "binary", activation: bool = True
    ) -> None:
        super().__init__()
        self.precision = precision
        self.linear = QuantLinear(in_f, out_f, kernel_quantizer(precision))
        self.bn = nn.BatchNorm1d(out_f)
        self._act = activation_quantizer(precision) if activation else Quantizer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.bn(self.linear(x.flatten(1))))


@torch.no_grad()
def clip_quantized_weights(model: nn.Module) -> None:
    """Clip the latent weights of every quantized layer to [-1, 1], in place.

    Called after each optimizer step. In place matters: a copied helper that clips a copy
    silently never clips, which the tests check for.
    """
    for module in model.modules():
        if isinstance(module, QuantConv2d | QuantLinear) and module.kernel_quantizer.bits < 32:
            module.weight.clamp_(-1.0, 1.0)
