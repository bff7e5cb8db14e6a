"""Bit-packed device slices (eBNN-style): weights as bits, batch norm + sign as thresholds.

A binary device slice (ConvP blocks, then the FC exit head; ddnn/nn/model.py `DeviceSlice`) is
packed into a few hundred bytes and run with NumPy alone, bit-exactly with the torch model in
eval mode. This package imports no PyTorch: packing a trained torch slice is the export's job
(`ddnn.nn.pack.pack_slice`); the kernels that run a slice are in `ddnn.packed.kernels`. This
module holds the packed layers and the `.bits` file (little-endian, ending in the SHA-256 of
the bytes before it); reading refuses a wrong magic, version or hash with ModelFileError.

Design: docs/design/packed-format.md (what a slice holds, why it equals torch, the format).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.core.config import ModelConfig, pooled_size
from ddnn.core.errors import ModelFileError

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
        # pixels in only at the first block (a device's); a packed tier's takes bits too
        kinds = (KIND_CONV_REAL, KIND_CONV_BINARY) if i == 0 else (KIND_CONV_BINARY,)
        if kind not in kinds or cin != in_ch or filters < 1:
            raise ModelFileError(f"{where}: ConvP block {i} does not fit the one before it")
        real = kind == KIND_CONV_REAL
        weights = r.array("<u8", filters * words_for(cin * 9), (filters, words_for(cin * 9)))
        direction = r.array("i1", filters)
        threshold = r.array("<f4" if real else "<i4", filters)
        if not np.isin(direction, (-1, 1)).all():
            raise ModelFileError(f"{where}: ConvP block {i} has a direction other than +-1")
        conv = ConvLayer(cin, filters, size, weights, direction, threshold, real_input=real)
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
    # The hash only says the file is what was written: a NaN written there would load and
    # then kill the device on its first frame. (An infinite threshold is legitimate: a
    # filter whose batch norm has gamma 0 is always, or never, on.)
    head_floats = [head.alpha, head.beta, head.override_score]
    if np.isnan(convs[0].threshold).any() or not all(np.isfinite(a).all() for a in head_floats):
        raise ModelFileError(f"{where} holds a NaN parameter, or an infinite one in the head")
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


# --- what packs ---------------------------------------------------------------------------


def packable(cfg: ModelConfig) -> str | None:
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
