"""A bit-packed upper tier: the cloud (or an edge) run with NumPy and numba, without PyTorch.

An upper tier fuses the binary feature maps of its inputs (ddnn/nn/fusion.py) and runs binary
ConvP blocks and a binary FC head on the result. Both fusions of binary maps stay binary (CC
as a block whose taps of absent inputs are masked out, MP as an OR of the present inputs'
bits), so the blocks after them run on bits as a device's later blocks do
(ddnn/packed/format.py). AP, float or k-bit tiers and tiers with hidden FC blocks stay on
PyTorch (`ddnn.nn.pack.pack_tier` refuses them). Exactness: bit for bit with torch in eval
mode, as a device slice's later blocks and head (tests/test_packed.py).

Design: docs/design/packed-format.md.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ddnn.core.errors import DDNNError, ModelFileError
from ddnn.core.manifest import Manifest, read_manifest, verified_path
from ddnn.core.roles import Role, tier_inputs
from ddnn.packed.format import PackedModel, pack_signs, read_packed, words_for
from ddnn.packed.kernels import conv_binary, head_dots, kernel_name, numba_kernels, valid_mask
from ddnn.packed.kernels import pool_threshold as pool

FUSIONS = ("CC", "MP")
MASKS_KEPT = 256  # presence patterns whose masks are kept (2^6 for six devices)


class PackedTier:
    """`model` (its first block takes the fused map) behind the `fusion` of `n_inputs`
    inputs of shape `in_shape` (f, h, w). Call it with the inputs' maps (N, f, h, w) as
    +-1 floats (any value where absent) and which are present (N,) bool: (class scores
    (|C|,) float32, the tier's own feature map float32 +-1). The numba kernels run where
    numba imports (`kernel`, as a device's)."""

    def __init__(
        self,
        model: PackedModel,
        fusion: str,
        n_inputs: int,
        in_shape: tuple[int, int, int],
        kernel: str = "auto",
        manifest: Manifest | None = None,
    ) -> None:
        if fusion not in FUSIONS:
            raise DDNNError(f"a packed tier fuses with {' or '.join(FUSIONS)}, not {fusion}")
        fused = fused_shape(fusion, n_inputs, in_shape)
        if tuple(model.input_shape) != fused or any(c.real_input for c in model.convs):
            raise DDNNError(f"the packed tier takes {model.input_shape}, its fusion gives {fused}")
        self.model = model
        self.manifest = manifest  # of the export it came from, if any
        self.fusion = fusion
        self.n_inputs = n_inputs
        self.in_shape = in_shape
        self.kernel = kernel_name(kernel)
        self.name = f"packed ({self.kernel})"
        self._masks: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._blocks, self._head = self._bind() if self.kernel == "numba" else ([], ())

    def __call__(self, maps: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = np.asarray(present, bool)
        if maps.shape != (self.n_inputs, *self.in_shape) or present.shape != (self.n_inputs,):
            raise ValueError(
                f"the tier takes maps {(self.n_inputs, *self.in_shape)} and presence "
                f"({self.n_inputs},), got {maps.shape} and {present.shape}"
            )
        if not present.any():
            raise ValueError("a tier needs at least one input present")
        first = self.model.convs[0]
        if self.fusion == "MP":
            a = np.where((maps[present] > 0).any(axis=0), np.float32(1), np.float32(-1))
            mask, n_valid = valid_mask(first)
        else:
            a = np.where(present[:, None, None, None] & (maps > 0), np.float32(1), np.float32(-1))
            a = a.reshape(first.in_channels, *first.in_size)
            mask, n_valid = self._present_mask(present)
        if self.kernel == "numba":
            return self._run_numba(a, mask, n_valid)
        for i, layer in enumerate(self.model.convs):
            masks = (mask, n_valid) if i == 0 else valid_mask(layer)
            a = pool(conv_binary(layer, a, *masks), layer.direction, layer.threshold)
        return self.model.head.scores(head_dots(self.model.head, a)), a

    def _present_mask(self, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first block's valid-tap masks and counts with the absent inputs' channels
        masked out (CC), kept for the last `MASKS_KEPT` presence patterns."""
        key = present.tobytes()
        if key not in self._masks:
            first = self.model.convs[0]
            inside, _ = valid_mask(first)
            channels = np.repeat(present, self.in_shape[0])  # (C,) of the concatenation
            taps = pack_signs(np.repeat(channels, 9)[None])[0]  # tap k = c * 9 + ky * 3 + kx
            mask = inside & taps[None]
            self._masks[key] = (mask, np.bitwise_count(mask).sum(axis=1).astype(np.int64))
            while len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        return self._masks[key]

    def _run_numba(
        self, a: np.ndarray, mask: np.ndarray, n_valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        k = numba_kernels()
        assert k is not None  # kernel_name checked
        bits = pack_signs(a.reshape(1, -1) > 0)[0]
        for i, (shape_in, weights, masks, ends, shape) in enumerate(self._blocks):
            if i == 0:
                masks = (mask, n_valid)
            out = np.empty(shape, np.float32)
            out_bits = np.zeros(words_for(out.size), np.uint64)
            k.conv_binary(bits, shape_in, weights, *masks, *ends, out, out_bits)
            a, bits = out, out_bits
        head = self.model.head
        scores = np.empty(head.out_features, np.float32)
        dots = np.empty(head.out_features, np.int64)
        k.head_scores(bits, head.in_features, *self._head, head.mode == "fma", scores, dots)
        if len(head.override_class):
            scores = head.scores(dots)
        return scores, a

    def _bind(self) -> tuple[list[tuple], tuple]:
        """Each block's arrays as the compiled kernel takes them (contiguous, its dtypes),
        made once: per block (shape in, weights, (masks, n_valid), (direction, threshold),
        shape out); and the head's (weights, alpha, beta)."""
        blocks = [
            (
                np.array([layer.in_channels, *layer.in_size], np.int64),
                np.ascontiguousarray(layer.weights, np.uint64),
                valid_mask(layer),
                (
                    np.ascontiguousarray(layer.direction, np.int8),
                    np.ascontiguousarray(layer.threshold),
                ),
                (layer.filters, *layer.out_size),
            )
            for layer in self.model.convs
        ]
        h = self.model.head
        head = (
            np.ascontiguousarray(h.weights, np.uint64),
            np.ascontiguousarray(h.alpha, np.float32),
            np.ascontiguousarray(h.beta, np.float32),
        )
        return blocks, head


def fused_shape(fusion: str, n_inputs: int, in_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The shape an upper tier's first block takes: CC stacks the inputs' channels."""
    f, h, w = in_shape
    return (f * n_inputs if fusion == "CC" else f, h, w)


def read_exported_tier(artifacts: Path | str, role: Role, kernel: str = "auto") -> PackedTier:
    """The packed form of upper tier `role` (an edge or the cloud) in an export, hash-checked
    against the manifest; ModelFileError where there is none (and why) or it misfits."""
    manifest = read_manifest(artifacts)
    entry = manifest.packed.get(role)
    if entry is None:
        raise ModelFileError(
            f"{artifacts} holds no packed form of {role} (a float tier, AP fusion, hidden FC "
            "blocks, or an export from before packed tiers): use the torch runtime"
        )
    model = read_packed(verified_path(artifacts, entry, f"the packed form of {role}"))
    cfg = manifest.ddnn_config().model
    tier = cfg.cloud if role.tier == "cloud" else cfg.edge
    if tier is None:
        raise ModelFileError(f"the model in {artifacts} has no {role}")
    n = len(tier_inputs(cfg, role))
    c, h, w = model.input_shape
    f = c // n if tier.aggregation == "CC" else c
    try:
        packed = PackedTier(model, tier.aggregation, n, (f, h, w), kernel, manifest)
    except DDNNError as e:
        raise ModelFileError(f"{entry.file} does not fit the manifest's topology: {e}") from None
    if model.n_classes != len(cfg.classes):
        raise ModelFileError(f"{entry.file} does not fit the manifest's topology")
    return packed
