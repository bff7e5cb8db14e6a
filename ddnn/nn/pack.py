"""Packing a trained torch device slice, or a binary upper tier, into the bit-packed format
(ddnn.packed.format; ddnn.packed.tier runs a packed tier).

The export's part of the packed runtime, and the only part that needs PyTorch: thresholds and
the head's batch norm are found by evaluating the slice's own eval-mode batch norm modules in
torch, so that the packed slice reproduces torch's float32 rounding exactly (the format's
docstring says in what sense).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ddnn.core.config import pooled_size
from ddnn.core.errors import DDNNError
from ddnn.nn.layers import FC, ConvP
from ddnn.nn.model import DeviceSlice, UpperTier
from ddnn.packed.format import ConvLayer, HeadLayer, PackedModel, batch_norm_scores, pack_signs
from ddnn.packed.tier import FUSIONS, fused_shape

MAX_OVERRIDES = 64  # beyond this the head's batch norm is not the formula we think it is

INT_NEVER = np.iinfo(np.int32).max  # a threshold no pre-activation reaches
INT_ALWAYS = np.iinfo(np.int32).min

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d


class NotPackable(DDNNError):
    """The slice or tier cannot be packed: a float tier, no ConvP block, no exit head, a
    fusion whose output is not binary, hidden FC blocks."""


def _f32_keys_to_values(keys: np.ndarray) -> np.ndarray:
    """Ordered int64 keys -> float32 values (key order = numeric order, -0 just below +0)."""
    keys = np.asarray(keys, np.int64)
    bits = np.where(keys >= 0, keys, (-keys - 1) | (1 << 31)).astype(np.uint32)
    return bits.view(np.float32)


def _f32_key(value: float) -> int:
    bits = int(np.array([value], np.float32).view(np.uint32)[0])
    return bits if bits < 1 << 31 else -((bits & 0x7FFFFFFF) + 1)


def _bn_positive(bn: BatchNorm, values: np.ndarray, spatial: tuple[int, int]) -> np.ndarray:
    """torch's eval batch norm + sign on pre-activations: values (K, F) -> (K, F) bool
    (True: +1), each value broadcast over a whole (h, w) plane; every position of a plane
    must agree (the vectorized and tail paths of torch's kernel round alike)."""
    x = torch.from_numpy(np.ascontiguousarray(values, np.float32))[:, :, None, None]
    x = x.expand(-1, -1, *spatial).contiguous()
    with torch.no_grad():
        y = bn(x) >= 0
    first = y[:, :, :1, :1]
    if not bool((y == first).all()):
        raise NotPackable("torch's batch norm gives different signs across positions")
    return first[:, :, 0, 0].numpy()


def _check_bn(bn: BatchNorm) -> None:
    if bn.training or bn.running_mean is None or bn.running_var is None:
        raise NotPackable("batch norm must be in eval mode with running statistics")


def _integer_thresholds(bn: BatchNorm, n: int, spatial: tuple[int, int]):
    """Thresholds for integer pre-activations in [-n, n], from torch's batch norm on each."""
    values = np.arange(-n, n + 1, dtype=np.int64)
    filters = bn.num_features
    pos = _bn_positive(bn, np.repeat(values[:, None], filters, axis=1), spatial)
    direction = np.ones(filters, np.int8)
    threshold = np.zeros(filters, np.int32)
    for f in range(filters):
        p = pos[:, f]
        steps = np.flatnonzero(p[1:] != p[:-1])
        if len(steps) > 1:
            raise NotPackable(f"batch norm channel {f} is not monotone in its input")
        if len(steps) == 0:
            threshold[f] = INT_ALWAYS if p[0] else INT_NEVER
        elif p[-1]:  # rises: +1 from values[step + 1] on
            threshold[f] = values[steps[0] + 1]
        else:  # falls: +1 up to values[step]: m <= t, stored as -m >= -t
            direction[f], threshold[f] = -1, -values[steps[0]]
    return direction, threshold


def _float_thresholds(bn: BatchNorm, spatial: tuple[int, int]):
    """Thresholds for float32 pre-activations: bisection over the ordered float32 values for
    the one where torch's batch norm + sign flips (float32 rounding is monotone)."""
    filters = bn.num_features
    top = _f32_key(float(np.finfo(np.float32).max))
    lo = np.full(filters, -top, np.int64)
    hi = np.full(filters, top, np.int64)

    def positive(keys: np.ndarray) -> np.ndarray:
        return _bn_positive(bn, _f32_keys_to_values(keys)[None, :], spatial)[0]

    at_lo, at_hi = positive(lo), positive(hi)
    direction = np.where(at_lo & ~at_hi, -1, 1).astype(np.int8)
    flips = at_lo != at_hi
    # invariant where flips: positive(lo) == at_lo, positive(hi) == at_hi
    while ((hi - lo > 1) & flips).any():
        mid = np.where(flips, (lo + hi) // 2, lo)
        p = positive(mid)
        same_as_lo = p == at_lo
        lo = np.where(flips & same_as_lo, mid, lo)
        hi = np.where(flips & ~same_as_lo, mid, hi)
    threshold = np.zeros(filters, np.float32)
    for f in range(filters):
        if not flips[f]:
            threshold[f] = -np.inf if at_lo[f] else np.inf
        elif direction[f] == 1:  # +1 from hi on
            threshold[f] = _f32_keys_to_values(hi[f : f + 1])[0]
        else:  # +1 up to lo: m <= t  ->  -m >= -t
            threshold[f] = -_f32_keys_to_values(lo[f : f + 1])[0]
    return direction, threshold


def _check_float_thresholds(
    bn: BatchNorm, direction: np.ndarray, threshold: np.ndarray, spatial: tuple[int, int]
) -> None:
    """Spot-check the float thresholds against torch on values around them and at random."""
    rng = np.random.default_rng(0)
    filters = bn.num_features
    near = []
    for t in threshold:
        if np.isfinite(t):
            key = _f32_key(float(abs(t)))
            for s in (1, -1):
                near.append(_f32_keys_to_values(s * key + np.arange(-3, 4)))
    values = np.concatenate([rng.uniform(-7000, 7000, 256).astype(np.float32), *near])
    pos = _bn_positive(bn, np.repeat(values[:, None], filters, axis=1), spatial)
    want = direction[None, :].astype(np.float64) * values[:, None] >= threshold[None, :]
    if not (pos == want).all():
        raise NotPackable("the first block's thresholds do not reproduce torch's batch norm")


def _head_layer(head: FC) -> HeadLayer:
    """The FC head: weight bits, and batch norm as (alpha, beta, mode) checked against torch
    on every reachable dot value, batched and one row at a time."""
    bn, linear = head.bn, head.linear
    _check_bn(bn)
    n_out, n_in = linear.weight.shape
    weights = pack_signs(linear.weight.detach().cpu().numpy() >= 0)
    dots = np.arange(-n_in, n_in + 1, 2, dtype=np.int64)
    grid = np.repeat(dots[:, None], n_out, axis=1)  # (dot values, classes)
    x = torch.from_numpy(grid.astype(np.float32))
    with torch.no_grad():
        want = bn(x).numpy()
        single = np.concatenate([bn(x[i : i + 1]).numpy() for i in range(len(x))])
    if not np.array_equal(want.view(np.uint32), single.view(np.uint32)):
        raise NotPackable("torch's head batch norm differs between batch 1 and batches")

    f32 = np.float32
    mean = bn.running_mean.detach().cpu().numpy().astype(f32)
    var = bn.running_var.detach().cpu().numpy().astype(f32)
    gamma = bn.weight.detach().numpy().astype(f32) if bn.weight is not None else np.ones(n_out, f32)
    bias = bn.bias.detach().numpy().astype(f32) if bn.bias is not None else np.zeros(n_out, f32)
    alpha = (f32(1) / np.sqrt(var + f32(bn.eps))) * gamma
    candidates = {
        "fma": (alpha, (bias.astype(np.float64) - mean.astype(np.float64) * alpha).astype(f32)),
        "mul_add": (alpha, bias - mean * alpha),
    }
    best = None
    for mode, (a, b) in candidates.items():
        got = batch_norm_scores(grid, a, b, mode)
        wrong = np.argwhere(got.view(np.uint32) != want.view(np.uint32))  # (row, class)
        if best is None or len(wrong) < len(best[3]):
            best = (mode, a, b, wrong)
    mode, a, b, wrong = best
    if len(wrong) > MAX_OVERRIDES:
        raise NotPackable(
            f"torch's head batch norm rounds unlike either formula at {len(wrong)} values"
        )
    return HeadLayer(
        n_in,
        n_out,
        weights,
        a,
        b,
        mode,
        wrong[:, 1].astype(np.uint16),
        dots[wrong[:, 0]].astype(np.int32),
        want[wrong[:, 0], wrong[:, 1]].astype(np.float32),
    )


def pack_slice(module: DeviceSlice, input_shape: tuple[int, int, int]) -> PackedModel:
    """Pack an eval-mode binary `DeviceSlice` (see the module docstring for what is exact)."""
    if module.head is None:
        raise NotPackable("a packed slice needs an exit head")
    return _pack(module, list(module.blocks), module.head, input_shape, real_input=True)


def pack_tier(module: UpperTier) -> PackedModel:
    """Pack an eval-mode binary upper tier (an edge or the cloud) for ddnn.packed.tier: its
    blocks after the fusion, which must keep the maps binary (CC or MP), and its head."""
    scheme = module.aggregate.scheme
    if scheme not in FUSIONS:
        raise NotPackable(f"{scheme} fusion of binary maps is not binary: only CC and MP pack")
    if len(module.fcs):
        raise NotPackable("hidden FC blocks do not pack (only the head)")
    shape = fused_shape(scheme, module.aggregate.n_inputs, module.in_shape)
    return _pack(module, list(module.blocks), module.head, shape, real_input=False)


def _pack(
    module: nn.Module,
    blocks: list[nn.Module],
    head: FC,
    input_shape: tuple[int, ...],
    real_input: bool,
) -> PackedModel:
    """ConvP `blocks` then `head` as a packed model; `real_input`: the first block takes
    pixels (a device), not +-1 activations (an upper tier)."""
    if module.training:
        raise NotPackable("pack in eval mode (batch norm with running statistics)")
    if not blocks:
        raise NotPackable("a packed model needs at least one ConvP block")
    if any(not isinstance(b, ConvP) or b.precision != "binary" for b in blocks) or (
        head.precision != "binary"
    ):
        raise NotPackable("only binary ConvP blocks and a binary head pack into bits")
    c, h, w = (int(d) for d in input_shape)
    convs = []
    size = (h, w)
    for i, block in enumerate(blocks):
        _check_bn(block.bn)
        weight = block.conv.weight.detach().cpu().numpy()
        filters, cin = weight.shape[:2]
        if cin != c:
            raise NotPackable(f"ConvP block {i} takes {cin} channels, gets {c}")
        out = (pooled_size(size[0], 1), pooled_size(size[1], 1))
        real = real_input and i == 0
        if real:
            direction, threshold = _float_thresholds(block.bn, out)
            _check_float_thresholds(block.bn, direction, threshold, out)
        else:
            direction, threshold = _integer_thresholds(block.bn, 9 * cin, out)
        bits = pack_signs(weight.reshape(filters, -1) >= 0)
        convs.append(ConvLayer(cin, filters, size, bits, direction, threshold, real))
        c, size = filters, out
    packed_head = _head_layer(head)
    if packed_head.in_features != c * size[0] * size[1]:
        raise NotPackable("the head's input does not match the ConvP blocks' output")
    return PackedModel((int(input_shape[0]), h, w), convs, packed_head)
