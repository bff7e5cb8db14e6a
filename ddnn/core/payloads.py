"""What a device actually puts on the wire for one sample, as bytes.

Class scores travel as little-endian float32 (4 bytes per class, the paper's formula (1)). A binary
feature map travels bit-packed, 1 bit per activation (+1 -> 1, -1 -> 0), row-major over (channels,
height, width), padded with zero bits to a whole byte. A k-bit feature map (a 2-bit or 4-bit tier,
the hybrid-precision paper) travels as its codes j = 0 .. Z (Z = 2^k - 1; the value is j * 2 / Z -
1), k bits each, the first value in the high bits of the first byte, padded with zero bits to a
whole byte. Any other feature map (a float tier, or raw pixels when the device has no layers)
travels as float32 values or uint8 pixels. The byte counts reported by evaluation are the lengths of
these payloads, so they are what the live services send.
"""

from __future__ import annotations

import numpy as np

from ddnn.core.config import FeatureFormat


def camera_frames(pixels: np.ndarray) -> np.ndarray:
    """Pixels 0..255 as a camera gives them: uint8, rounded (what a C device takes)."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def pack_scores(scores: np.ndarray) -> bytes:
    return np.ascontiguousarray(scores, dtype="<f4").tobytes()


def pack_bits(features: np.ndarray) -> bytes:
    """+-1 activations -> packed bits (1 bit each)."""
    return np.packbits(np.asarray(features).ravel() > 0).tobytes()


def unpack_bits(buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Packed bits -> float32 +-1 array of `shape`; the inverse of `pack_bits`."""
    n = int(np.prod(shape))
    if len(buf) != (n + 7) // 8:
        raise ValueError(f"bit payload has {len(buf)} bytes, expected {(n + 7) // 8} for {shape}")
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=n)
    return (bits.astype(np.float32) * 2 - 1).reshape(shape)


CODE_BITS = {"2bit": 2, "4bit": 4}  # bits per value of the k-bit formats
VALUE_BITS: dict[str, int] = {"binary": 1, **CODE_BITS, "pixels": 8, "float": 32}


def _shifts(bits: int) -> np.ndarray:
    """Where each of a byte's 8 / bits codes sits, first one highest."""
    return (8 - bits * (np.arange(8 // bits) + 1)).astype(np.uint8)


def pack_codes(features: np.ndarray, bits: int) -> bytes:
    """k-bit activations (values j * 2 / Z - 1) -> their codes j, `bits` bits each."""
    z = 2**bits - 1
    codes = np.rint((np.asarray(features, dtype=np.float64).ravel() + 1.0) * (z / 2.0))
    codes = np.clip(codes, 0, z).astype(np.uint8)
    per = 8 // bits
    codes = np.concatenate([codes, np.zeros(-len(codes) % per, dtype=np.uint8)])
    packed = np.bitwise_or.reduce(codes.reshape(-1, per) << _shifts(bits), axis=1)
    return packed.astype(np.uint8).tobytes()


def unpack_codes(buf: bytes, shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Packed k-bit codes -> float32 values of `shape`; the inverse of `pack_codes`, and the
    same float32 arithmetic as the model's quantizer (ddnn/nn/layers.py `kbit_values`)."""
    n, per, z = int(np.prod(shape)), 8 // bits, 2**bits - 1
    if len(buf) != -(-n // per):
        raise ValueError(
            f"{bits}-bit payload has {len(buf)} bytes, expected {-(-n // per)} for {shape}"
        )
    codes = (np.frombuffer(buf, dtype=np.uint8)[:, None] >> _shifts(bits)) & z
    values = codes.ravel()[:n].astype(np.float32) * np.float32(2.0 / z) - np.float32(1.0)
    return values.reshape(shape)


def pack_features(features: np.ndarray, fmt: FeatureFormat) -> bytes:
    """fmt: "binary" (packed bits), "2bit" or "4bit" (packed codes), "pixels" (uint8) or
    "float" (float32)."""
    if fmt == "binary":
        return pack_bits(features)
    if fmt in CODE_BITS:
        return pack_codes(features, CODE_BITS[fmt])
    if fmt == "pixels":
        return camera_frames(features).tobytes()
    return np.ascontiguousarray(features, dtype="<f4").tobytes()
