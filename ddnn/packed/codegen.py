"""A bit-packed device slice as C99 source: `ddnn codegen` (docs/design/c-devices.md).

The generated `ddnn_slice.c` is the slice's constant tables, the kernels of `c/kernels.c`,
and one entry point, `ddnn_device_run(pixels, scores, feature_bits)`: a uint8 frame in, the
class scores and the bit-packed feature map out, exactly as the packed runtime gives them
and the wire carries them. No heap, nothing beyond the C standard library.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.manifest import Manifest, read_manifest
from ddnn.packed.format import ConvLayer, HeadLayer, PackedModel, packable, unpack_signs
from ddnn.packed.inspect import read_exported
from ddnn.packed.kernels import first_layer_patterns

HEADER = "ddnn_slice.h"
SOURCE = "ddnn_slice.c"
PIXEL_MAX = 255  # camera frames are uint8


def first_block_thresholds(conv: ConvLayer) -> np.ndarray:
    """The first block's float32 thresholds as int32 ones, exactly: its pre-activations are
    integers of magnitude at most 9C * 255 (uint8 pixels), and for an integer m,
    `d * m >= t` iff `d * m >= ceil(t)`; thresholds out of reach are clamped just past it."""
    reach = 9 * conv.in_channels * PIXEL_MAX
    t = np.ceil(conv.threshold.astype(np.float64))
    return np.clip(t, -reach, reach + 1).astype(np.int32)


def _c_array(ctype: str, name: str, values: np.ndarray, per_line: int = 12) -> str:
    flat = [_c_number(v) for v in np.asarray(values).ravel()]
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _c_number(v: np.generic) -> str:
    if isinstance(v, np.floating):  # a float32 exactly, as a hex literal
        return float(v).hex() + "f"
    if isinstance(v, np.integer) and v < 0 and v == np.iinfo(np.int32).min:
        return "INT32_MIN"
    return f"{int(v)}u" if isinstance(v, np.unsignedinteger) else str(int(v))


def _channel_words(conv: ConvLayer) -> np.ndarray:
    """A binary block's weights as (filters, 9 taps, words) uint32, channel c of a tap at bit
    c % 32 of word c // 32 (the layout the kernels hold activations in)."""
    signs = unpack_signs(conv.weights, conv.taps).reshape(conv.filters, conv.in_channels, 9)
    per_tap = signs.transpose(0, 2, 1)  # (filters, 9, channels)
    words = math.ceil(conv.in_channels / 32)
    padded = np.zeros((conv.filters, 9, words * 32), bool)
    padded[:, :, : conv.in_channels] = per_tap
    bits = padded.reshape(conv.filters, 9, words, 32).astype(np.uint64)
    return (bits << np.arange(32, dtype=np.uint64)).sum(axis=3).astype(np.uint32)


def _first_rows(conv: ConvLayer) -> np.ndarray:
    """A first block's kernel rows as codes (filters, channels * 3) uint8: the row's sign
    pattern once its first sign is factored out (ddnn/packed/kernels.py), +4 where that
    first sign is -1."""
    pattern, first = first_layer_patterns(conv)
    return (pattern + 4 * (first < 0)).astype(np.uint8)


def _block(i: int, conv: ConvLayer) -> str:
    """Block i's tables and its `Block` descriptor."""
    c, (h, w), f = conv.in_channels, conv.in_size, conv.filters
    what = "pixels in" if conv.real_input else "bits in"
    shape = "x".join(map(str, (f, *conv.out_size)))
    out = f"/* block {i}: ConvP, {what}, {c}x{h}x{w} -> {shape} */\n"
    if conv.real_input:
        out += _c_array("uint8_t", f"B{i}_ROWS", _first_rows(conv))
        threshold, rows, weights, words = first_block_thresholds(conv), f"B{i}_ROWS", "0", 1
    else:
        out += _c_array("uint32_t", f"B{i}_WEIGHTS", _channel_words(conv), per_line=6)
        threshold, rows, weights = conv.threshold.astype(np.int32), "0", f"B{i}_WEIGHTS"
        words = math.ceil(c / 32)
    out += _c_array("int8_t", f"B{i}_DIRECTION", conv.direction.astype(np.int8))
    out += _c_array("int32_t", f"B{i}_THRESHOLD", threshold, per_line=8)
    fields = f"{c}, {h}, {w}, {f}, {words}, {rows}, {weights}, B{i}_DIRECTION, B{i}_THRESHOLD"
    return out + f"static const Block B{i} = {{{fields}}};\n"


def _head(head: HeadLayer) -> str:
    signs = unpack_signs(head.weights, head.in_features)
    weights = np.packbits(signs, axis=1)  # the wire's bit order, per class
    out = f"/* head: {head.in_features} features -> {head.out_features} classes ({head.mode}) */\n"
    out += _c_array("uint8_t", "HEAD_WEIGHTS", weights, per_line=16)
    out += _c_array("float", "HEAD_ALPHA", head.alpha.astype(np.float32), per_line=4)
    out += _c_array("float", "HEAD_BETA", head.beta.astype(np.float32), per_line=4)
    if len(head.override_class):  # scores neither rounding reproduces (normally none)
        out += _c_array("uint16_t", "OVERRIDE_CLASS", head.override_class)
        out += _c_array("int32_t", "OVERRIDE_DOT", head.override_dot, per_line=8)
        out += _c_array("float", "OVERRIDE_SCORE", head.override_score.astype(np.float32), 4)
    return out


def _run(model: PackedModel) -> str:
    """Scratch buffers and `ddnn_device_run`: every block, then the head."""
    convs, head = model.convs, model.head
    width = max(conv.in_size[1] for conv in convs)
    held = max(conv.filters for conv in convs) * width  # a conv row of every filter
    pad = 3 * convs[0].in_channels * (convs[0].in_size[1] + 2)  # the first block's input rows
    out = f"static sum_t CARRY[{held}], VMAX[{held}], ACC[{held}], PAD[{pad}], ROWS[{4 * width}];\n"
    out += f"static int32_t DOTS[{head.out_features}];\n"
    for i, conv in enumerate(convs[:-1]):  # the channel words between blocks
        h, w = conv.out_size
        out += f"static uint32_t ACT{i}[{h * w * math.ceil(conv.filters / 32)}];\n"
    out += (
        "\nint ddnn_device_run(const uint8_t *pixels, float *scores, uint8_t *feature_bits)\n"
        "{\n    memset(feature_bits, 0, DDNN_SLICE_FEATURE_BYTES);\n"
    )
    for i in range(len(convs)):
        into = f"ACT{i}, 0" if i < len(convs) - 1 else "0, feature_bits"
        source = "pixels, 0" if i == 0 else f"0, ACT{i - 1}"
        if i < len(convs) - 1:
            out += f"    memset(ACT{i}, 0, sizeof ACT{i});\n"
        out += f"    run_block(&B{i}, {source}, {into}, CARRY, VMAX, ACC, PAD, ROWS);\n"
    fma = int(head.mode == "fma")
    out += (
        f"    run_head(feature_bits, DDNN_SLICE_FEATURE_BYTES, {head.in_features}, "
        "DDNN_SLICE_CLASSES,\n             HEAD_WEIGHTS, HEAD_ALPHA, HEAD_BETA, "
        f"{fma}, scores, DOTS);\n"
    )
    if n := len(head.override_class):
        out += (
            f"    for (int k = 0; k < {n}; k++)\n"
            "        if (DOTS[OVERRIDE_CLASS[k]] == OVERRIDE_DOT[k])\n"
            "            scores[OVERRIDE_CLASS[k]] = OVERRIDE_SCORE[k];\n"
        )
    return out + "    return 0;\n}\n"


def header(model: PackedModel, device: int, model_version: str) -> str:
    c, h, w = model.input_shape
    features = math.prod(model.feature_shape)
    return f"""/* Generated by `ddnn codegen`: device {device}'s bit-packed slice. Do not edit. */
#ifndef DDNN_SLICE_H
#define DDNN_SLICE_H

#include <stdint.h>

#define DDNN_SLICE_DEVICE {device}
#define DDNN_SLICE_MODEL_VERSION "{model_version}"
#define DDNN_SLICE_CHANNELS {c}
#define DDNN_SLICE_HEIGHT {h}
#define DDNN_SLICE_WIDTH {w}
#define DDNN_SLICE_PIXELS ({c} * {h} * {w}) /* a uint8 frame, (C, H, W) row-major */
#define DDNN_SLICE_CLASSES {model.n_classes}
#define DDNN_SLICE_FEATURE_SHAPE "{"x".join(map(str, model.feature_shape))}"
#define DDNN_SLICE_FEATURE_BYTES {(features + 7) // 8} /* the map, bit-packed as on the wire */

/* A frame in; the class scores (float32) and the feature map's bits (np.packbits of the
   +-1 map, +1 -> 1, most significant bit first) out, as the packed runtime gives them.
   Not reentrant: the scratch rows are static. Returns 0. */
int ddnn_device_run(const uint8_t *pixels, float *scores, uint8_t *feature_bits);

#endif
"""


def _sum_type(model: PackedModel) -> str:
    """The narrowest type that holds every block's pre-activations (and -their bound - 1)."""
    reach = max(
        9 * conv.in_channels * (PIXEL_MAX if conv.real_input else 1) for conv in model.convs
    )
    bits = 16 if reach + 1 <= np.iinfo(np.int16).max else 32
    return f"typedef int{bits}_t sum_t;\n#define SUM_MIN INT{bits}_MIN\n"


def source(model: PackedModel, device: int, origin: str) -> str:
    """The whole `ddnn_slice.c` of a packed slice."""
    kernels = resources.files("ddnn.packed").joinpath("c/kernels.c").read_text()
    tables = "\n".join(
        [*(_block(i, conv) for i, conv in enumerate(model.convs)), _head(model.head)]
    )
    return (
        f"/* Generated by `ddnn codegen` from {origin}: device {device}'s bit-packed slice.\n"
        "   Do not edit; regenerate. Build with -ffp-contract=off (the head's rounding). */\n"
        f'#include <stdint.h>\n#include <string.h>\n#include "{HEADER}"\n\n'
        f"{_sum_type(model)}\n{kernels}\n{tables}\n{_run(model)}"
    )


def write_slice(
    model: PackedModel, device: int, model_version: str, origin: str, out: Path
) -> list[Path]:
    """Write `ddnn_slice.h` and `ddnn_slice.c` into folder `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / HEADER, out / SOURCE]
    files[0].write_text(header(model, device, model_version))
    files[1].write_text(source(model, device, origin))
    return files


def generate(artifacts: Path, out: Path, devices: list[int] | None = None) -> dict[int, list[Path]]:
    """Each device's slice of an export (hash-checked) as C, in `out/device-<i>/`; refused
    by name for a model whose device slice is not all binary."""
    manifest: Manifest = read_manifest(artifacts)
    cfg = manifest.ddnn_config().model
    if (why := packable(cfg)) is not None:
        raise DDNNError(f"no C for this model's devices: {why}")
    written = {}
    for device in range(cfg.n_devices) if devices is None else devices:
        model, file = read_exported(artifacts, device, manifest)
        origin = f"{file.name} (model version {manifest.model_version})"
        folder = out / f"device-{device}"
        written[device] = write_slice(model, device, manifest.model_version, origin, folder)
    return written
