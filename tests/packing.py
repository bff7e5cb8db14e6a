"""Helpers of the packed tests (test_packed*.py): slices with batch norms off their
defaults, and bitwise comparisons of packed slices and tiers against torch."""

from __future__ import annotations

import numpy as np
import torch

from ddnn.core.config import load_config
from ddnn.nn.model import DeviceSlice, UpperTier
from ddnn.nn.pack import pack_tier
from ddnn.packed.kernels import numba_kernels, runner
from ddnn.packed.tier import PackedTier

KERNELS = ["numpy", "numba"] if numba_kernels() is not None else ["numpy"]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def random_bn(module: torch.nn.Module, seed: int, scale: float = 300.0) -> None:
    """Batch-norm statistics and affine parameters away from the defaults, with a negative
    gamma and a zero gamma in every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * scale)
                m.running_var.copy_(torch.rand(n, generator=g) * scale + 0.5)
                m.weight.copy_((torch.rand(n, generator=g) - 0.5) * 4)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.weight[0] = -abs(m.weight[0]) - 0.1
                if n > 2:
                    m.weight[1] = 0.0


def _fit_bn(bn: torch.nn.Module, inputs: torch.Tensor, g: torch.Generator) -> None:
    """Statistics from the batch norm's real inputs (so thresholds cut through the data),
    random affine parameters, gamma < 0 on channel 0 and gamma == 0 on channel 1."""
    dims = [d for d in range(inputs.dim()) if d != 1]
    per_channel = inputs.transpose(0, 1).reshape(inputs.shape[1], -1)
    n = bn.num_features
    bn.running_mean.copy_(per_channel.median(dim=1).values)
    bn.running_var.copy_(inputs.var(dim=dims) + 0.5)
    signs = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    bn.weight.copy_((torch.rand(n, generator=g) + 0.2) * signs)
    bn.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.5)
    bn.weight[0] = -abs(bn.weight[0])
    if n > 2:
        bn.weight[1] = 0.0


def untrained_slice(overrides: list[str] | None = None, seed: int = 0) -> DeviceSlice:
    """An untrained slice whose batch norms are fitted to random frames (see `_fit_bn`)."""
    cfg = load_config(overrides=overrides)
    torch.manual_seed(seed)
    module = DeviceSlice(cfg.model).eval()
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(64, *cfg.model.input_shape, generator=g) * 255
    with torch.no_grad():
        for block in module.blocks:
            _fit_bn(block.bn, torch.nn.functional.max_pool2d(block.conv(h), 3, 2, 1), g)
            h = block(h)
        _fit_bn(module.head.bn, module.head.linear(h.flatten(1)), g)
    return module


def torch_outputs(module: DeviceSlice, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        scores, features = module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return scores.numpy(), features.numpy()


def assert_exact(packed, module: DeviceSlice, x: np.ndarray, kernels=KERNELS) -> None:
    """Every frame of x (N, C, H, W): packed scores and feature maps bitwise equal to the
    torch slice's, run batched (as offline evaluation) and at batch 1 (as the device)."""
    scores, features = torch_outputs(module, x)
    for kernel in kernels:
        run = runner(packed, kernel)
        for i in range(len(x)):
            s, f = run(x[i])
            assert same_bits(f, features[i]), f"{kernel}: feature map of frame {i} differs"
            assert same_bits(s, scores[i]), f"{kernel}: scores of frame {i} differ"
    run = runner(packed, kernels[-1])
    for i in range(0, len(x), max(1, len(x) // 50)):
        s1, f1 = torch_outputs(module, x[i : i + 1])
        s, f = run(x[i])
        assert same_bits(f, f1[0]) and same_bits(s, s1[0])


def presence_patterns(n: int) -> list[np.ndarray]:
    """Every set of present inputs but the empty one."""
    return [np.array([(p >> i) & 1 for i in range(n)], bool) for p in range(1, 2**n)]


def assert_tier_exact(tier: UpperTier, maps_per_pattern: int = 3, seed: int = 0) -> None:
    """The packed tier's scores and own map bitwise equal torch's, for every presence
    pattern, with each kernel."""
    packed = pack_tier(tier)
    n, shape = tier.aggregate.n_inputs, tier.in_shape
    rng = np.random.default_rng(seed)
    for kernel in KERNELS:
        run = PackedTier(packed, tier.aggregate.scheme, n, shape, kernel)
        for present in presence_patterns(n):
            for _ in range(maps_per_pattern):
                maps = np.where(rng.random((n, *shape)) < 0.5, -1.0, 1.0).astype(np.float32)
                with torch.no_grad():
                    scores, own = tier(
                        torch.from_numpy(maps[None]), torch.from_numpy(present[None])
                    )
                got_scores, got_own = run(maps, present)
                assert same_bits(got_own, own[0].numpy()), (kernel, present)
                assert same_bits(got_scores, scores[0].numpy()), (kernel, present)
