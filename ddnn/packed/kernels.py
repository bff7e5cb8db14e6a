"""Running a bit-packed slice (ddnn.packed.format): the NumPy kernels, and the numba ones.

`runner(model, "numpy")` is plain NumPy (np.bitwise_count for popcount, the first
block's sums as a float64 matrix product); "numba" runs small compiled kernels
(ddnn/packed/numba_kernels.py: LLVM popcount; the first block summed in float32 with a rigorous
error bound, and any window within that bound of its threshold re-decided on exact float64
sums, so both kernels take the same decisions), about 5x faster than NumPy per frame at
batch 1, where NumPy's per-call overhead dominates; "auto" takes numba when it can be
imported, else NumPy. `ddnn bench device` measures both against torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ddnn.core.config import pooled_size
from ddnn.core.errors import DDNNError
from ddnn.packed.format import (
    ConvLayer,
    HeadLayer,
    PackedModel,
    pack_signs,
    unpack_signs,
    words_for,
)

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def runner(model: PackedModel, kernel: str = "auto") -> Runner:
    """image (C, H, W) float32 0..255 -> (scores (|C|,) float32, features (f, h, w) float32
    +-1). kernel: "auto" (numba when importable, else NumPy), "numba", "numpy"."""
    if kernel_name(kernel) == "numba":
        kernels = numba_kernels()
        assert kernels is not None  # kernel_name checked
        return _numba_runner(model, kernels)
    return lambda image: run_numpy(model, image)


def kernel_name(kernel: str = "auto") -> str:
    """The kernel that runs ("numba" or "numpy") for a kernel asked for: auto, numba, numpy."""
    if kernel not in ("auto", "numba", "numpy"):
        raise ValueError(f"kernel must be auto, numba or numpy, got {kernel!r}")
    if kernel != "numpy":
        if numba_kernels() is not None:
            return "numba"
        if kernel == "numba":
            raise DDNNError("the numba kernel was asked for but numba cannot be imported")
    return "numpy"


# --- NumPy inference ----------------------------------------------------------------------


def _windows(padded: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """(C, H+2, W+2) -> view (C, 3, 3, h, w) of the 3x3 windows at `stride`."""
    sc, sy, sx = padded.strides
    c = padded.shape[0]
    return as_strided(
        padded, shape=(c, 3, 3, *size), strides=(sc, sy, sx, stride * sy, stride * sx)
    )


def pool_threshold(pre: np.ndarray, direction: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """pre-activations (F, H, W) -> max-pool 3x3/2 pad 1 -> `direction * m >= threshold` as
    float32 +-1 (F, h, w)."""
    f, h, w = pre.shape
    ho, wo = pooled_size(h, 1), pooled_size(w, 1)
    low = -np.inf if pre.dtype.kind == "f" else np.iinfo(pre.dtype).min
    padded = np.full((f, 2 * ho + 1, 2 * wo + 1), low, pre.dtype)
    padded[:, 1 : h + 1, 1 : w + 1] = pre
    # separable: the max of rows 2i-1..2i+1 (padded 2i..2i+2), then of the columns
    rows = np.maximum(np.maximum(padded[:, 0:-2:2], padded[:, 1:-1:2]), padded[:, 2::2])
    m = np.maximum(np.maximum(rows[:, :, 0:-2:2], rows[:, :, 1:-1:2]), rows[:, :, 2::2])
    if pre.dtype.kind == "f":
        on = direction[:, None, None] * m >= threshold[:, None, None].astype(np.float64)
    else:
        on = direction[:, None, None].astype(np.int64) * m >= threshold[:, None, None]
    return np.where(on, np.float32(1), np.float32(-1))


def conv_real(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
    """Pixels (C, H, W) -> exact pre-activations (F, H, W) float64: signed sums of the taps."""
    signs = layer._cache.get("signs")
    if signs is None:
        bits = unpack_signs(layer.weights, layer.taps)
        signs = layer._cache["signs"] = np.where(bits, 1.0, -1.0)
    c, h, w = x.shape
    padded = np.zeros((c, h + 2, w + 2))
    padded[:, 1:-1, 1:-1] = x
    cols = _windows(padded, (h, w), 1).reshape(c * 9, h * w)
    return (signs @ cols).reshape(layer.filters, h, w)


def valid_mask(layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
    """Per output position: the valid-tap mask words (H*W, words) and their count."""
    if "mask" not in layer._cache:
        c = layer.in_channels
        h, w = layer.in_size
        inside = np.zeros((c, h + 2, w + 2), bool)
        inside[:, 1:-1, 1:-1] = True
        taps = _windows(inside, (h, w), 1).reshape(c * 9, h * w)
        mask = pack_signs(taps.T)
        layer._cache["mask"] = (mask, np.bitwise_count(mask).sum(axis=1).astype(np.int64))
    return layer._cache["mask"]


def conv_binary(
    layer: ConvLayer,
    a: np.ndarray,
    mask: np.ndarray | None = None,
    n_valid: np.ndarray | None = None,
) -> np.ndarray:
    """+-1 activations (C, H, W) -> integer pre-activations (F, H, W): per position
    n_valid - 2 * popcount((patch XOR weights) AND valid). `mask` and `n_valid`: other taps
    than those inside the map (a packed tier's, with absent inputs: ddnn/packed/tier.py)."""
    c, h, w = a.shape
    padded = np.zeros((c, h + 2, w + 2), bool)
    padded[:, 1:-1, 1:-1] = a > 0
    patches = pack_signs(_windows(padded, (h, w), 1).reshape(c * 9, h * w).T)  # (HW, words)
    if mask is None or n_valid is None:
        mask, n_valid = valid_mask(layer)
    disagree = np.bitwise_count((patches[None] ^ layer.weights[:, None, :]) & mask[None])
    return (n_valid - 2 * disagree.sum(axis=2, dtype=np.int64)).reshape(layer.filters, h, w)


def head_dots(head: HeadLayer, a: np.ndarray) -> np.ndarray:
    """+-1 features -> integer dots with the +-1 weights (classes,): n - 2 * popcount(XOR)."""
    words = pack_signs(a.reshape(1, -1) > 0)[0]
    disagree = np.bitwise_count(words[None] ^ head.weights).sum(axis=1, dtype=np.int64)
    return head.in_features - 2 * disagree


def run_numpy(model: PackedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(image, dtype=np.float32)
    if a.shape != model.input_shape:
        raise ValueError(f"the slice takes frames of shape {model.input_shape}, got {a.shape}")
    for layer in model.convs:
        pre = conv_real(layer, a) if layer.real_input else conv_binary(layer, a)
        a = pool_threshold(pre, layer.direction, layer.threshold)
    return model.head.scores(head_dots(model.head, a)), a


# --- numba kernels (optional) -------------------------------------------------------------


@functools.cache
def numba_kernels() -> ModuleType | None:
    """The compiled-kernel module, or None when numba cannot be imported."""
    # Imported here, not at the top: numba is optional (a device without it runs on NumPy),
    # and importing it costs about a second that the NumPy path should not pay.
    try:
        from ddnn.packed import numba_kernels as _packed_numba
    except (ImportError, OSError):  # no numba, or one that does not fit this NumPy
        return None
    return _packed_numba


def first_layer_patterns(layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
    """For the compiled first block: per filter and (channel, kernel row), the row's sign
    pattern 0..3 (+++, ++-, +-+, +--) once the sign of its first tap (the second array) is
    factored out."""
    signs = np.where(unpack_signs(layer.weights, layer.taps), 1, -1)
    signs = signs.reshape(layer.filters, layer.in_channels * 3, 3)
    first = signs[:, :, :1]
    norm = signs * first
    pattern = (norm[:, :, 1] < 0) * 2 + (norm[:, :, 2] < 0)
    return pattern.astype(np.int64), first[:, :, 0].astype(np.float32)


def _numba_runner(model: PackedModel, k: ModuleType) -> Runner:
    head = model.head
    steps = []  # bound once: contiguous arrays of the dtypes the kernels are compiled for
    for conv in model.convs:
        shape = (conv.filters, *conv.out_size)
        weights = np.ascontiguousarray(conv.weights, np.uint64)
        ends = (np.ascontiguousarray(conv.direction, np.int8), np.ascontiguousarray(conv.threshold))
        if conv.real_input:
            pattern, gsign = first_layer_patterns(conv)
            steps.append((True, (weights, pattern, gsign, *ends), shape, None))
        else:
            shape_in = np.array([conv.in_channels, *conv.in_size], np.int64)
            masks, n_valid = valid_mask(conv)
            arrays = (weights, np.ascontiguousarray(masks, np.uint64), n_valid, *ends)
            steps.append((False, arrays, shape, shape_in))
    # Scratch reused from frame to frame: each layer's bits (the kernels clear them) and the
    # activations of every layer but the last, which is returned (a device keeps it).
    scratch = [
        (np.empty(shape, np.float32), np.zeros(words_for(math.prod(shape)), np.uint64))
        for _, _, shape, _ in steps
    ]
    head_w = np.ascontiguousarray(head.weights, np.uint64)
    alpha = np.ascontiguousarray(head.alpha, np.float32)
    beta = np.ascontiguousarray(head.beta, np.float32)
    fma, n_in, n_classes = head.mode == "fma", head.in_features, head.out_features
    overrides = len(head.override_class) > 0
    conv_first, conv_binary, head_scores = k.conv_first, k.conv_binary, k.head_scores
    dots = np.empty(n_classes, np.int64)
    last = len(steps) - 1
    input_shape = model.input_shape

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.ascontiguousarray(image, dtype=np.float32)
        if a.shape != input_shape:  # the kernels do not check bounds
            raise ValueError(f"the slice takes frames of shape {input_shape}, got {a.shape}")
        bits = None
        for i, (real, arrays, shape, shape_in) in enumerate(steps):
            out, out_bits = scratch[i]
            if i == last:
                out = np.empty(shape, np.float32)
            if real:
                conv_first(a, *arrays, out, out_bits)
            else:
                conv_binary(bits, shape_in, *arrays, out, out_bits)
            a, bits = out, out_bits
        scores = np.empty(n_classes, np.float32)
        head_scores(bits, n_in, head_w, alpha, beta, fma, scores, dots)
        if overrides:
            scores = head.scores(dots)
        return scores, a

    return run
