"""Bit-packed device slices (eBNN-style): weights as bits, batch norm + sign as thresholds.

A binary device slice (ConvP blocks, then the FC exit head; ddnn/model.py `DeviceSlice`) is
packed into a few hundred bytes and run with NumPy alone, bit-exactly with the torch model in
eval mode. This module imports no PyTorch; only `pack_slice` (export time) imports it.

What a packed slice holds
-------------------------
- ConvP block: the binarized 3x3 kernels, one bit per weight (1 = +1, i.e. w >= 0, as
  `ste_sign`), weight k = c*9 + ky*3 + kx of filter f at bit k % 64 of word k // 64 of row f
  (uint64 words). Max-pool -> batch norm -> sign folds into one comparison per channel on
  the pooled pre-activation m: `+1 iff direction * m >= threshold`, direction +1 where the
  batch norm rises with m (gamma > 0), -1 where it falls (gamma < 0: "m <= t" is stored as
  "-m >= -t"); a channel whose sign never changes (gamma == 0, or a flip point out of reach)
  has a threshold no m reaches (+-inf, or the int32 limits). Pooling commutes with the
  comparison because batch norm is monotone, so only the max is needed either way.
- FC exit head: the binarized weights as bits (feature i = c*h*w + y*w + x, torch's
  `flatten` order) and batch norm as `alpha`, `beta` (float32) with `score = x*alpha + beta`
  on the integer dot x, rounded once (fused multiply-add, how torch evaluates it on CPUs
  with FMA) or twice (mode "mul_add"), whichever reproduces torch; plus a table of
  (class, dot, score) overrides for any reachable dot where neither does (normally empty).

Exactness (what `pack_slice` guarantees, and how)
--------------------------------------------------
Thresholds are not derived by algebra: `pack_slice` evaluates the slice's own eval-mode
`BatchNorm` modules in PyTorch and finds where the sign flips, so the packed comparison
reproduces torch's float32 rounding exactly.
- Binary-input ConvP blocks (the second and later): the pre-activation is an integer in
  [-9C, 9C] (the +-1 products over the taps inside the image; zero padding contributes
  nothing, so each output position counts its valid taps: n_valid - 2 * popcount((patch XOR
  weights) AND valid)). torch's batch norm is evaluated on every one of these integers, the
  sign pattern is checked to be monotone, and the flip point becomes an int32 threshold.
  Equal to torch always.
- The first ConvP block (pixels 0..255 times +-1 weights): torch's float32 batch norm is
  monotone in its float32 input, so its sign flips at one float32 value, found by bisection
  over the ordered float32 bit patterns; the threshold is that float32. The packed path sums
  the taps in float64, which is exact for float32 pixels in 0..255 (27 products of at most
  8 + 24 significant bits). With integer pixels (camera frames: uint8) torch's float32 sums
  are exact too, so the feature maps are equal always. With real-valued pixels (data-set
  replay), torch's float32 sums carry rounding that depends on its summation order (torch
  itself gives different last bits at batch 1 and in batches); the packed path then equals
  torch unless a sum lies within that rounding (about 1e-3) of a channel's threshold. The
  tests check every sample of the default synthetic test set and of an MVMC-format set.
- FC head: the dot of +-1 features with +-1 weights is an exact integer on both sides
  (|dot| <= 1024 < 2**24 in float32). The class scores are real-valued (batch norm without
  sign); they are bitwise equal to torch's: `pack_slice` evaluates torch's head batch norm
  on every reachable dot value (n - 2p for p = 0..n), batched and one row at a time, and
  stores the formula mode and overrides that reproduce every one of them.
So given equal feature maps, the class scores are bitwise equal, not merely within rounding.

File format (`.bits`, little-endian)
------------------------------------
    header  "<8sHHHHH": magic b"DDNNBITS", format version, n ConvP blocks, C, H, W
    per ConvP block  "<BBHH": kind (1: real-valued input, 2: binary input), 0, in channels,
            filters; then weights uint64 (filters, ceil(9*in/64)), direction int8 (filters,),
            threshold float32 (kind 1) or int32 (kind 2) (filters,)
    head    "<BBHHH": kind 3, mode (0 fma, 1 mul_add), in features, classes, n overrides;
            then weights uint64 (classes, ceil(in/64)), alpha float32, beta float32
            (classes,), overrides: class uint16, dot int32, score float32 (n,)
    trailer SHA-256 of every byte before it (32 bytes)
The spatial sizes follow from (H, W) and the blocks (each halves them, as ConvP does).
Reading checks the magic, the version and the trailer hash and refuses anything else with
ModelFileError; the export manifest also holds the file's SHA-256.

Kernels
-------
`PackedModel.runner("numpy")` is plain NumPy (np.bitwise_count for popcount, the first
block's sums as a float64 matrix product); "numba" runs small compiled kernels
(ddnn/_packed_numba.py: LLVM popcount; the first block summed in float32 with a rigorous
error bound, and any window within that bound of its threshold re-decided on exact float64
sums, so both kernels take the same decisions), about 5x faster than NumPy per frame at
batch 1, where NumPy's per-call overhead dominates; "auto" takes numba when it can be
imported, else NumPy. `ddnn bench device` measures both against torch.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ddnn.core.config import pooled_size
from ddnn.core.errors import DDNNError, ModelFileError

if TYPE_CHECKING:
    from ddnn.core.manifest import Manifest
    from ddnn.nn.model import DeviceSlice

MAGIC = b"DDNNBITS"
FORMAT_VERSION = 1
SUFFIX = ".bits"

KIND_CONV_REAL = 1
KIND_CONV_BINARY = 2
KIND_HEAD = 3
MODES = ("fma", "mul_add")

_HEADER = struct.Struct("<8sHHHHH")
_CONV = struct.Struct("<BBHH")
_HEAD = struct.Struct("<BBHHH")
_DIGEST = 32
MAX_OVERRIDES = 64  # beyond this the head's batch norm is not the formula we think it is

INT_NEVER = np.iinfo(np.int32).max  # a threshold no pre-activation reaches
INT_ALWAYS = np.iinfo(np.int32).min

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class NotPackable(DDNNError):
    """The slice cannot be packed: a float device tier, no ConvP block or no exit head."""


def words_for(bits: int) -> int:
    return (bits + 63) // 64


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """(rows, n) bool (True = +1) -> (rows, ceil(n/64)) uint64, bit k of row r at bit k % 64
    of word k // 64."""
    rows, n = signs.shape
    nbytes = words_for(n) * 8
    packed = np.packbits(signs.astype(bool), axis=1, bitorder="little")
    out = np.zeros((rows, nbytes), np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view("<u8").astype(np.uint64)


def unpack_signs(words: np.ndarray, n: int) -> np.ndarray:
    """The inverse of `pack_signs`: (rows, words) uint64 -> (rows, n) bool."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, count=n, bitorder="little").astype(bool)


# --- the packed model ---------------------------------------------------------------------


@dataclass(eq=False)
class ConvLayer:
    """One ConvP block: 3x3 conv (pad 1) -> 3x3/2 max-pool (pad 1) -> batch norm -> sign."""

    in_channels: int
    filters: int
    in_size: tuple[int, int]
    weights: np.ndarray  # (filters, words) uint64
    direction: np.ndarray  # (filters,) int8, +1 or -1
    threshold: np.ndarray  # (filters,) float32 (real-valued input) or int32 (binary input)
    real_input: bool
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def out_size(self) -> tuple[int, int]:
        return pooled_size(self.in_size[0], 1), pooled_size(self.in_size[1], 1)

    @property
    def taps(self) -> int:
        return self.in_channels * 9

    def arrays(self) -> list[np.ndarray]:
        return [self.weights, self.direction, self.threshold]


@dataclass(eq=False)
class HeadLayer:
    """The FC exit head: binary linear -> batch norm (no sign): real-valued class scores."""

    in_features: int
    out_features: int
    weights: np.ndarray  # (classes, words) uint64
    alpha: np.ndarray  # (classes,) float32
    beta: np.ndarray  # (classes,) float32
    mode: str  # "fma" or "mul_add"
    override_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    override_dot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    override_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def arrays(self) -> list[np.ndarray]:
        return [
            self.weights,
            self.alpha,
            self.beta,
            self.override_class,
            self.override_dot,
            self.override_score,
        ]

    def scores(self, dots: np.ndarray) -> np.ndarray:
        """Batch norm of the integer dots (classes,) -> float32 scores, as torch rounds it."""
        scores = batch_norm_scores(dots, self.alpha, self.beta, self.mode)
        overrides = zip(self.override_class, self.override_dot, self.override_score, strict=True)
        for k, d, v in overrides:
            if dots[k] == d:
                scores[k] = v
        return scores


def batch_norm_scores(dots: np.ndarray, alpha: np.ndarray, beta: np.ndarray, mode: str):
    if mode == "fma":  # dot * alpha is exact in float64 (11 + 24 bits): one rounding at the end
        return (dots.astype(np.float64) * alpha + beta.astype(np.float64)).astype(np.float32)
    return dots.astype(np.float32) * alpha + beta  # two float32 roundings


@dataclass(eq=False)
class PackedModel:
    input_shape: tuple[int, int, int]  # (C, H, W)
    convs: list[ConvLayer]
    head: HeadLayer

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        last = self.convs[-1]
        return (last.filters, *last.out_size)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights and thresholds (and the head's batch norm) in the packed form:
        what the device holds in memory to run the slice."""
        return sum(a.nbytes for layer in [*self.convs, self.head] for a in layer.arrays())

    @property
    def torch_float32_bytes(self) -> int:
        """Bytes of the same slice as float32 in torch: conv kernels, head weights, and four
        batch-norm numbers (weight, bias, running mean and variance) per channel or class."""
        weights = sum(c.filters * c.taps for c in self.convs)
        weights += self.head.in_features * self.head.out_features
        return 4 * (weights + 4 * (sum(c.filters for c in self.convs) + self.n_classes))

    def describe(self) -> list[dict[str, Any]]:
        """One row per layer: what it is, shapes, parameters and bytes (for `ddnn inspect`)."""
        rows = []
        shape = self.input_shape
        for i, conv in enumerate(self.convs):
            out = (conv.filters, *conv.out_size)
            rows.append(
                {
                    "layer": f"convp{i}",
                    "kind": "ConvP, pixels in" if conv.real_input else "ConvP, bits in",
                    "input": list(shape),
                    "output": list(out),
                    "weights": conv.filters * conv.taps,
                    "thresholds": conv.filters,
                    "parameters": conv.filters * conv.taps + conv.filters,
                    "bytes": sum(a.nbytes for a in conv.arrays()),
                }
            )
            shape = out
        h = self.head
        rows.append(
            {
                "layer": "head",
                "kind": f"FC head, {h.mode}",
                "input": [h.in_features],
                "output": [h.out_features],
                "weights": h.in_features * h.out_features,
                "thresholds": 0,
                "parameters": h.in_features * h.out_features + 2 * h.out_features,
                "bytes": sum(a.nbytes for a in h.arrays()),
            }
        )
        return rows

    def runner(self, kernel: str = "auto") -> Runner:
        """image (C, H, W) float32 0..255 -> (scores (|C|,) float32, features (f, h, w)
        float32 +-1). kernel: "auto" (numba when importable, else NumPy), "numba", "numpy"."""
        if _resolve_kernel(kernel) == "numba":
            return _numba_runner(self, numba_kernels())
        return lambda image: run_numpy(self, image)

    def kernel_name(self, kernel: str = "auto") -> str:
        return _resolve_kernel(kernel)


def _resolve_kernel(kernel: str) -> str:
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


def _valid_mask(layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
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


def conv_binary(layer: ConvLayer, a: np.ndarray) -> np.ndarray:
    """+-1 activations (C, H, W) -> integer pre-activations (F, H, W): per position
    n_valid - 2 * popcount((patch XOR weights) AND valid)."""
    c, h, w = a.shape
    padded = np.zeros((c, h + 2, w + 2), bool)
    padded[:, 1:-1, 1:-1] = a > 0
    patches = pack_signs(_windows(padded, (h, w), 1).reshape(c * 9, h * w).T)  # (HW, words)
    mask, n_valid = _valid_mask(layer)
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
def numba_kernels() -> Any | None:
    """The compiled-kernel module, or None when numba cannot be imported."""
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


def _numba_runner(model: PackedModel, k: Any) -> Runner:
    head = model.head
    steps = []  # bound once: contiguous arrays of the dtypes the kernels are compiled for
    for conv in model.convs:
        shape = (conv.filters, *conv.out_size)
        arrays = (
            np.ascontiguousarray(conv.weights, np.uint64),
            np.ascontiguousarray(conv.direction, np.int8),
            np.ascontiguousarray(conv.threshold),
        )
        if conv.real_input:
            pattern, gsign = first_layer_patterns(conv)
            steps.append((True, (arrays[0], pattern, gsign, *arrays[1:]), shape, None))
        else:
            shape_in = np.array([conv.in_channels, *conv.in_size], np.int64)
            steps.append((False, arrays, shape, shape_in))
    head_w = np.ascontiguousarray(head.weights, np.uint64)
    alpha = np.ascontiguousarray(head.alpha, np.float32)
    beta = np.ascontiguousarray(head.beta, np.float32)
    fma, n_in, n_classes = head.mode == "fma", head.in_features, head.out_features
    overrides = len(head.override_class) > 0
    conv_first, conv_binary, head_scores = k.conv_first, k.conv_binary, k.head_scores

    input_shape = model.input_shape

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.ascontiguousarray(image, dtype=np.float32)
        if a.shape != input_shape:  # the kernels do not check bounds
            raise ValueError(f"the slice takes frames of shape {input_shape}, got {a.shape}")
        bits = None
        for real, arrays, shape, shape_in in steps:
            out = np.empty(shape, np.float32)
            out_bits = np.zeros(words_for(out.size), np.uint64)
            if real:
                conv_first(a, *arrays, out, out_bits)
            else:
                conv_binary(bits, shape_in, *arrays, out, out_bits)
            a, bits = out, out_bits
        scores = np.empty(n_classes, np.float32)
        dots = np.empty(n_classes, np.int64)
        head_scores(bits, n_in, head_w, alpha, beta, fma, scores, dots)
        if overrides:
            scores = head.scores(dots)
        return scores, a

    return run


# --- file format --------------------------------------------------------------------------


def encode(model: PackedModel) -> bytes:
    c, h, w = model.input_shape
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, len(model.convs), c, h, w)]
    for conv in model.convs:
        kind = KIND_CONV_REAL if conv.real_input else KIND_CONV_BINARY
        parts.append(_CONV.pack(kind, 0, conv.in_channels, conv.filters))
        tdtype = "<f4" if conv.real_input else "<i4"
        parts += [
            np.ascontiguousarray(conv.weights, "<u8").tobytes(),
            np.ascontiguousarray(conv.direction, "i1").tobytes(),
            np.ascontiguousarray(conv.threshold, tdtype).tobytes(),
        ]
    hd = model.head
    n_over = len(hd.override_class)
    parts.append(
        _HEAD.pack(KIND_HEAD, MODES.index(hd.mode), hd.in_features, hd.out_features, n_over)
    )
    parts += [
        np.ascontiguousarray(hd.weights, "<u8").tobytes(),
        np.ascontiguousarray(hd.alpha, "<f4").tobytes(),
        np.ascontiguousarray(hd.beta, "<f4").tobytes(),
        np.ascontiguousarray(hd.override_class, "<u2").tobytes(),
        np.ascontiguousarray(hd.override_dot, "<i4").tobytes(),
        np.ascontiguousarray(hd.override_score, "<f4").tobytes(),
    ]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


class _Reader:
    def __init__(self, buf: bytes, where: str) -> None:
        self.buf, self.pos, self.where = buf, 0, where

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ModelFileError(f"{self.where} is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, s: struct.Struct) -> tuple[Any, ...]:
        return s.unpack(self.take(s.size))

    def array(self, dtype: str, count: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        dt = np.dtype(dtype)
        a = np.frombuffer(self.take(dt.itemsize * count), dt).astype(dt.newbyteorder("="))
        return a.reshape(shape) if shape is not None else a


def decode(buf: bytes, where: str = "packed slice") -> PackedModel:
    """Parse a `.bits` file's bytes; ModelFileError for anything that is not one, intact."""
    if len(buf) < _HEADER.size + _DIGEST or buf[:8] != MAGIC:
        raise ModelFileError(f"{where} is not a packed DDNN slice (no {MAGIC.decode()} header)")
    _, version, n_conv, c, h, w = _HEADER.unpack_from(buf)
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{where} has packed format version {version}; this ddnn reads {FORMAT_VERSION}"
        )
    body, digest = buf[:-_DIGEST], buf[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise ModelFileError(f"{where} does not match its own hash: the file is corrupt")
    r = _Reader(body, where)
    r.take(_HEADER.size)
    if n_conv < 1 or c < 1 or h < 1 or w < 1:
        raise ModelFileError(f"{where}: a packed slice needs a ConvP block and an input shape")
    convs = []
    in_ch, size = c, (h, w)
    for i in range(n_conv):
        kind, _, cin, filters = r.unpack(_CONV)
        want = KIND_CONV_REAL if i == 0 else KIND_CONV_BINARY
        if kind != want or cin != in_ch or filters < 1:
            raise ModelFileError(f"{where}: ConvP block {i} does not fit the one before it")
        weights = r.array("<u8", filters * words_for(cin * 9), (filters, words_for(cin * 9)))
        direction = r.array("i1", filters)
        threshold = r.array("<f4" if i == 0 else "<i4", filters)
        if not np.isin(direction, (-1, 1)).all():
            raise ModelFileError(f"{where}: ConvP block {i} has a direction other than +-1")
        conv = ConvLayer(cin, filters, size, weights, direction, threshold, real_input=i == 0)
        convs.append(conv)
        in_ch, size = filters, conv.out_size
    kind, mode, n_in, n_out, n_over = r.unpack(_HEAD)
    if kind != KIND_HEAD or mode >= len(MODES) or n_in != in_ch * size[0] * size[1]:
        raise ModelFileError(f"{where}: the head does not fit the ConvP blocks' output")
    if n_out < 1:
        raise ModelFileError(f"{where}: the head has no classes")
    head = HeadLayer(
        n_in,
        n_out,
        r.array("<u8", n_out * words_for(n_in), (n_out, words_for(n_in))),
        r.array("<f4", n_out),
        r.array("<f4", n_out),
        MODES[mode],
        r.array("<u2", n_over),
        r.array("<i4", n_over),
        r.array("<f4", n_over),
    )
    if (head.override_class >= n_out).any():
        raise ModelFileError(f"{where}: an override names a class the head does not have")
    if r.pos != len(body):
        raise ModelFileError(f"{where} has {len(body) - r.pos} bytes after the head")
    return PackedModel((c, h, w), convs, head)


def write_packed(path: Path | str, model: PackedModel) -> bytes:
    data = encode(model)
    Path(path).write_bytes(data)
    return data


def read_packed(path: Path | str) -> PackedModel:
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read packed slice {path}: {e.strerror}") from None
    return decode(buf, str(path))


# --- packing a torch slice (export time: the only part that needs PyTorch) ----------------


def packable(cfg: Any) -> str | None:
    """Why a device slice of this ModelConfig cannot be packed, or None when it can."""
    if cfg.device.precision != "binary":
        return (
            f"the device tier has precision {cfg.device.precision!r}: only a binary slice packs "
            "into bits (keep the torch runtime for it)"
        )
    if not cfg.device.conv_filters:
        return "the device slice has no ConvP block"
    if cfg.local is None:
        return "the device slice has no exit head (a topology without local exit)"
    return None


def _f32_keys_to_values(keys: np.ndarray) -> np.ndarray:
    """Ordered int64 keys -> float32 values (key order = numeric order, -0 just below +0)."""
    keys = np.asarray(keys, np.int64)
    bits = np.where(keys >= 0, keys, (-keys - 1) | (1 << 31)).astype(np.uint32)
    return bits.view(np.float32)


def _f32_key(value: float) -> int:
    bits = int(np.array([value], np.float32).view(np.uint32)[0])
    return bits if bits < 1 << 31 else -((bits & 0x7FFFFFFF) + 1)


def _bn_positive(bn: Any, values: np.ndarray, spatial: tuple[int, int]) -> np.ndarray:
    """torch's eval batch norm + sign on pre-activations: values (K, F) -> (K, F) bool
    (True: +1), each value broadcast over a whole (h, w) plane; every position of a plane
    must agree (the vectorized and tail paths of torch's kernel round alike)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(values, np.float32))[:, :, None, None]
    x = x.expand(-1, -1, *spatial).contiguous()
    with torch.no_grad():
        y = bn(x) >= 0
    first = y[:, :, :1, :1]
    if not bool((y == first).all()):
        raise NotPackable("torch's batch norm gives different signs across positions")
    return first[:, :, 0, 0].numpy()


def _check_bn(bn: Any) -> None:
    if bn.training or bn.running_mean is None or bn.running_var is None:
        raise NotPackable("batch norm must be in eval mode with running statistics")


def _integer_thresholds(bn: Any, n: int, spatial: tuple[int, int]):
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


def _float_thresholds(bn: Any, spatial: tuple[int, int]):
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


def _check_float_thresholds(bn, direction, threshold, spatial) -> None:
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


def _head_layer(head: Any) -> HeadLayer:
    """The FC head: weight bits, and batch norm as (alpha, beta, mode) checked against torch
    on every reachable dot value, batched and one row at a time."""
    import torch

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
    from ddnn.nn.layers import ConvP

    if module.training:
        raise NotPackable("pack the slice in eval mode (batch norm with running statistics)")
    blocks = list(module.blocks)
    if not blocks or module.head is None:
        raise NotPackable("a packed slice needs at least one ConvP block and an exit head")
    if any(not isinstance(b, ConvP) or b.precision != "binary" for b in blocks) or (
        module.head.precision != "binary"
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
        if i == 0:
            direction, threshold = _float_thresholds(block.bn, out)
            _check_float_thresholds(block.bn, direction, threshold, out)
        else:
            direction, threshold = _integer_thresholds(block.bn, 9 * cin, out)
        bits = pack_signs(weight.reshape(filters, -1) >= 0)
        convs.append(ConvLayer(cin, filters, size, bits, direction, threshold, i == 0))
        c, size = filters, out
    head = _head_layer(module.head)
    if head.in_features != c * size[0] * size[1]:
        raise NotPackable("the head's input does not match the ConvP blocks' output")
    return PackedModel((int(input_shape[0]), h, w), convs, head)


# --- inspection ---------------------------------------------------------------------------


def read_exported(
    artifacts: Path | str, device: int, manifest: Manifest | None = None
) -> tuple[PackedModel, Path]:
    """Device `device`'s packed slice from an export directory, and its path: refused with
    ModelFileError where the model has no such device, the export holds no packed slice for
    it (and why), or the file does not match its hash in the manifest or the topology."""
    from ddnn.core.manifest import read_manifest, verified_path

    if manifest is None:
        manifest = read_manifest(artifacts)
    role = f"device-{device}"
    cfg = manifest.ddnn_config().model
    if not 0 <= device < cfg.n_devices:
        raise ModelFileError(f"the model has devices 0..{cfg.n_devices - 1}, not {device}")
    entry = manifest.packed.get(role)
    if entry is None:
        why = packable(cfg) or "the export predates the packed format, or packing failed"
        raise ModelFileError(
            f"{artifacts} holds no packed slice for {role} ({why}); use the torch runtime"
        )
    file = verified_path(artifacts, entry, f"the packed slice of {role}")
    model = read_packed(file)
    if (model.input_shape, model.n_classes) != (tuple(cfg.input_shape), len(cfg.classes)):
        raise ModelFileError(f"{entry.file} does not fit the manifest's topology")
    return model, file


def inspect_artifact(path: Path | str, device: int = 0) -> dict[str, Any]:
    """What `ddnn inspect` shows: a packed slice's layers, parameter count and bytes, from an
    export directory (device `device`, hash-checked against the manifest) or a `.bits` file."""
    path = Path(path)
    if path.is_dir():
        model, file = read_exported(path, device)
        role = f"device-{device}"
    else:
        file, role = path, None
        model = read_packed(file)
    rows = model.describe()
    return {
        "file": str(file),
        "role": role,
        "file_bytes": file.stat().st_size,
        "format_version": FORMAT_VERSION,
        "input_shape": list(model.input_shape),
        "feature_shape": list(model.feature_shape),
        "classes": model.n_classes,
        "layers": rows,
        "parameters": sum(row["parameters"] for row in rows),
        "weights_bytes": model.weights_bytes,
        "torch_float32_bytes": model.torch_float32_bytes,
    }
