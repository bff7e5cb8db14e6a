"""Energy of inference per sample and per tier, counted from the topology as the hybrid-precision
paper counts it.

As Section III does: operations times the energies of its Table I, communication not
included. Per layer: binary MACs, 32-bit additions or 32-bit MACs by what the weights and
inputs are (a k-bit tier bit-serially), the max-pool's comparisons, batch norm, fusion and
the exit's decision, and every bit of memory read once per sample. A sample pays for the
tiers it reached. `float_reference` is the same topology with every tier in float32, every
device present, and every sample through every tier: the paper's full-precision network on
the cloud, against which it reports its ratios.

Design: docs/design/energy.md (what is counted, layer by layer).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ddnn.core.config import Aggregation, ModelConfig, Precision, pooled_size

# Table I of the hybrid-precision paper, picojoules
PJ = {"mac1": 0.2, "mac32": 4.6, "add32": 0.9, "bits": 2.5}
PIXEL_BITS = 8  # a camera frame's value


@dataclass
class Ops:
    """Operations and memory bits of one pass of something, for one sample."""

    mac1: int = 0  # binary MACs
    mac32: int = 0  # 32-bit MACs
    add32: int = 0  # 32-bit additions and comparisons
    bits: int = 0  # memory bits read

    def __add__(self, other: Ops) -> Ops:
        return Ops(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, k: int) -> Ops:
        return Ops(*(getattr(self, f.name) * k for f in fields(self)))

    @property
    def microjoules(self) -> float:
        return sum(getattr(self, name) * pj for name, pj in PJ.items()) * 1e-6


BITS = {"binary": 1, "2bit": 2, "4bit": 4, "float": 32}  # bits per weight of a precision
INPUT_BITS = {**BITS, "pixels": PIXEL_BITS}  # bits per input value read


def _products(n: int, precision: Precision, inputs: str) -> Ops:
    """`n` weight-times-input products: 32-bit MACs in a float tier; on real-valued inputs
    (pixels, float values), one 32-bit addition per weight bit (a +-1 weight adds or
    subtracts, a k-bit weight shifts and adds k times); on quantized inputs, binary MACs,
    one per pair of weight and input bits (bit-serial: k_w x k_a XNOR-popcounts)."""
    if precision == "float":
        return Ops(mac32=n)
    if inputs in ("pixels", "float"):
        return Ops(add32=n * BITS[precision])
    return Ops(mac1=n * BITS[precision] * INPUT_BITS[inputs])


def _norm(n: int, precision: Precision, head: bool = False) -> Ops:
    """Batch norm and activation of `n` outputs: a binary tier's sign is one threshold
    comparison; otherwise (a head's real scores, a k-bit or float tier) a 32-bit MAC."""
    if precision == "binary" and not head:
        return Ops(add32=n)
    return Ops(mac32=n)


def _params(n: int, precision: Precision, head: bool = False) -> int:
    """Bits of per-channel parameters: a 32-bit threshold, or batch norm's scale and shift."""
    return n * (32 if precision == "binary" and not head else 64)


def conv_block(
    cin: int, filters: int, size: tuple[int, int], precision: Precision, inputs: str
) -> tuple[Ops, tuple[int, int]]:
    """One ConvP block on a (cin, h, w) input; `inputs`: "pixels", a precision's format
    ("binary", "2bit", "4bit") or "float". Returns its ops and its output size."""
    h, w = size
    out = (pooled_size(h, 1), pooled_size(w, 1))
    taps = filters * cin * 9 * h * w
    pooled = filters * out[0] * out[1]
    ops = _products(taps, precision, inputs) + Ops(add32=8 * pooled) + _norm(pooled, precision)
    ops.bits = (
        filters * cin * 9 * BITS[precision]
        + _params(filters, precision)
        + cin * h * w * INPUT_BITS[inputs]
    )
    return ops, out


def fc(n_in: int, n_out: int, precision: Precision, inputs: str, head: bool) -> Ops:
    """A fully connected block (`head`: the exit head, whose batch-normed scores stay real)."""
    products = n_in * n_out
    ops = _products(products, precision, inputs) + _norm(n_out, precision, head)
    ops.bits = (
        products * BITS[precision] + _params(n_out, precision, head) + n_in * INPUT_BITS[inputs]
    )
    return ops


def fuse(scheme: Aggregation, n: int, values: int, n_classes: int | None = None) -> Ops:
    """Fusing `n` inputs of `values` values each; `n_classes`: class scores at an exit (CC
    then has its linear layer), with the exit's decision."""
    ops = Ops(add32=(n - 1) * values if scheme in ("MP", "AP") else 0)
    if n_classes is not None:
        if scheme == "CC":
            ops += Ops(mac32=n * n_classes * n_classes, add32=n_classes)
        ops += Ops(mac32=n_classes)  # the exit's entropy
    return ops


def _stack(
    filters: list[int], cin: int, size: tuple[int, int], precision: Precision, inputs: str
) -> tuple[Ops, int, tuple[int, int]]:
    """ConvP blocks one after the other: their ops, the output channels and size."""
    total = Ops()
    for f in filters:
        ops, size = conv_block(cin, f, size, precision, inputs)
        total, cin, inputs = total + ops, f, _format(precision)
    return total, cin, size


def tier_ops(model: ModelConfig, as_float: bool = False) -> dict[str, Ops]:
    """One pass of each part of `model` for one sample: "device" (one device's ConvP
    blocks) and "device_head"; "local" (fusing the devices' scores, deciding the exit);
    "edge" (one edge's fusion and blocks), "edge_head" and "edge_exit"; "cloud" (its fusion,
    blocks, hidden FC blocks and head). `as_float`: every tier in float32."""
    n_classes = len(model.classes)

    def precision(p: Precision) -> Precision:
        return "float" if as_float else p

    c, h, w = model.input_shape
    device_p = precision(model.device.precision)
    parts: dict[str, Ops] = {}
    parts["device"], f, size = _stack(model.device.conv_filters, c, (h, w), device_p, "pixels")
    inputs = "pixels" if not model.device.conv_filters else _format(device_p)
    if model.local is not None:
        parts["device_head"] = fc(f * size[0] * size[1], n_classes, device_p, inputs, head=True)
        parts["local"] = fuse(model.local.aggregation, model.n_devices, n_classes, n_classes)
    n_in = model.n_devices
    if model.edge is not None:
        e = model.edge
        group = max(len(g) for g in e.groups)
        edge_p = precision(e.precision)
        fused = f * group if e.aggregation == "CC" else f
        blocks, f, size = _stack(e.conv_filters, fused, size, edge_p, inputs)
        parts["edge"] = fuse(e.aggregation, group, fused * size[0] * size[1] // fused) + blocks
        inputs = _format(edge_p)
        parts["edge_head"] = fc(f * size[0] * size[1], n_classes, edge_p, inputs, head=True)
        parts["edge_exit"] = fuse(e.exit_aggregation, len(e.groups), n_classes, n_classes)
        n_in = len(e.groups)
    if model.cloud is not None:
        cl = model.cloud
        cloud_p = precision(cl.precision)
        cloud = fuse(cl.aggregation, n_in, f * size[0] * size[1])
        fused = f * n_in if cl.aggregation == "CC" else f
        blocks, f, size = _stack(cl.conv_filters, fused, size, cloud_p, inputs)
        cloud += blocks
        width, fmt = f * size[0] * size[1], _format(cloud_p)
        for m in cl.fc_hidden:
            cloud += fc(width, m, cloud_p, fmt, head=False)
            width = m
        parts["cloud"] = cloud + fc(width, n_classes, cloud_p, fmt, head=True)
    return parts


def _format(p: Precision) -> str:
    """What a tier of precision `p` hands on: its quantized codes, or float values."""
    return p


def energy_uj(
    model: ModelConfig, present: np.ndarray, exit_index: np.ndarray, exits: list[str]
) -> dict[str, float | None]:
    """Mean energy per sample in microjoules, by tier, of samples with devices `present`
    (N, D) that exited at `exits[exit_index]` (N,); the float reference, and how many times
    the total it is (module doc)."""
    uj = {name: ops.microjoules for name, ops in tier_ops(model).items()}
    none = np.zeros(len(exit_index))
    local = present.sum(axis=1) * (uj["device"] + uj.get("device_head", 0.0)) + uj.get("local", 0)
    reached = {name: exit_index >= i for i, name in enumerate(exits)}
    edge = cloud = none
    if model.edge is not None:
        edges = np.sum([present[:, g].any(axis=1) for g in model.edge.groups], axis=0)
        edge = reached["edge"] * (edges * (uj["edge"] + uj["edge_head"]) + uj["edge_exit"])
    if model.cloud is not None:
        cloud = reached["cloud"] * uj["cloud"]
    ref = tier_ops(model, as_float=True)  # no early exits: the blocks and the last head
    full = ref["device"] * model.n_devices + ref.get("cloud", Ops())
    if model.edge is not None:
        full += ref["edge"] * len(model.edge.groups)
    total = float(np.mean(local + edge + cloud))
    return {
        "local": round(float(np.mean(local)), 4),
        "edge": round(float(np.mean(edge)), 4),
        "cloud": round(float(np.mean(cloud)), 4),
        "total": round(total, 4),
        "float_reference": round(full.microjoules, 4),
        "reduction": round(full.microjoules / total, 2) if total else None,
    }
