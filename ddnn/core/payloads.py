"""What a device actually puts on the wire for one sample, as bytes.

Class scores travel as little-endian float32 (4 bytes per class, the paper's formula (1)).
A binary feature map travels bit-packed, 1 bit per activation (+1 -> 1, -1 -> 0), row-major
over (channels, height, width), padded with zero bits to a whole byte. A non-binary feature
map (a float device tier, or raw pixels when the device has no layers) travels as uint8
pixels (raw input) or float32 values. The byte counts reported by evaluation are the lengths
of these payloads, so they are what the live services send.
"""

from __future__ import annotations

import numpy as np

from ddnn.core.config import FeatureFormat


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


def pack_features(features: np.ndarray, fmt: FeatureFormat) -> bytes:
    """fmt: "binary" (packed bits), "pixels" (uint8) or "float" (float32)."""
    if fmt == "binary":
        return pack_bits(features)
    if fmt == "pixels":
        return np.clip(np.rint(features), 0, 255).astype(np.uint8).tobytes()
    return np.ascontiguousarray(features, dtype="<f4").tobytes()
