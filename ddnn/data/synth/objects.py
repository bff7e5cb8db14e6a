"""The objects of a scene: cars, buses and persons with per-class ranges of size and colour
that overlap, and the static props (lamp posts, trees, bins)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ddnn.data.synth.geometry import Builder, Mesh, end_windows, side_quad, side_windows

_VEHICLE_COLOURS = np.array(
    [
        [235, 235, 235],
        [30, 30, 35],
        [160, 165, 170],
        [120, 120, 125],
        [180, 30, 30],
        [30, 60, 150],
        [20, 90, 50],
        [200, 170, 40],
        [230, 110, 20],
        [90, 60, 40],
    ],
    dtype=np.float64,
)
_BUS_COLOURS = np.array(
    [
        [235, 235, 235],
        [220, 190, 30],
        [200, 40, 35],
        [40, 80, 170],
        [40, 130, 70],
        [230, 120, 20],
        [160, 165, 170],
    ],
    dtype=np.float64,
)
_CLOTHES_COLOURS = np.array(
    [
        [30, 30, 35],
        [235, 235, 235],
        [180, 30, 30],
        [30, 60, 150],
        [120, 120, 125],
        [90, 60, 40],
        [200, 170, 40],
        [20, 90, 50],
        [160, 165, 170],
        [60, 60, 90],
    ],
    dtype=np.float64,
)
_SKIN_COLOURS = np.array(
    [[230, 190, 160], [200, 150, 110], [140, 95, 65], [90, 60, 40]], dtype=np.float64
)
_GLASS = np.array([45, 55, 70], dtype=np.float64)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 25.0) -> np.ndarray:
    """A palette colour with a little random variation, so colours are not a fixed code."""
    colour = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return np.clip(colour, 5.0, 250.0)


def _make_car(rng: np.random.Generator) -> Builder:
    """Low body plus a glass cabin. One car in eight is a van: tall, with a cabin over nearly
    its whole length and a row of side windows, which end-on looks much like a small bus."""
    van = rng.random() < 0.12
    length = rng.uniform(4.3, 5.6) if van else rng.uniform(3.4, 5.2)
    width = rng.uniform(1.75, 2.1) if van else rng.uniform(1.55, 1.95)
    height = rng.uniform(1.9, 2.4) if van else rng.uniform(1.3, 1.75)
    body_top = height * (rng.uniform(0.4, 0.5) if van else rng.uniform(0.45, 0.62))
    cabin_len = length * (rng.uniform(0.75, 0.92) if van else rng.uniform(0.42, 0.7))
    cabin_back = -length / 2 + length * rng.uniform(0.02, 0.2 if not van else 0.06)
    inset = width * (rng.uniform(0.0, 0.03) if van else rng.uniform(0.04, 0.12))
    body = _pick(rng, _VEHICLE_COLOURS)
    b = Builder()
    b.box((-length / 2, length / 2), (-width / 2, width / 2), (0.0, body_top), body, 0)
    _wheels(b, length, width, min(0.33, body_top * 0.6), 1)
    # Headlights / tail lights on the ends.
    light = np.array([230.0, 220.0, 180.0])
    for y in ((-width * 0.42, -width * 0.25), (width * 0.25, width * 0.42)):
        end_windows(b, length / 2, -length / 2, y, (body_top * 0.55, body_top * 0.78), light, 1)
    x_cab = (cabin_back, cabin_back + cabin_len)
    y_cab = (-width / 2 + inset, width / 2 - inset)
    b.box(x_cab, y_cab, (body_top, height), body, 2)
    # The cabin's sides and ends are mostly glass.
    n_windows = int(rng.integers(2, 5)) if van else int(rng.integers(1, 3))
    side_windows(
        b,
        (x_cab[0] + 0.1, x_cab[1] - 0.1),
        y_cab[1],
        (body_top + 0.08, height - 0.1),
        n_windows,
        0.12,
        _GLASS,
        3,
    )
    end_windows(
        b,
        x_cab[1],
        x_cab[0],
        (y_cab[0] + 0.08, y_cab[1] - 0.08),
        (body_top + 0.06, height - 0.1),
        _GLASS,
        3,
    )
    return b


def _make_bus(rng: np.random.Generator) -> Builder:
    """One long tall box with a row of side windows and a big windscreen. One bus in five
    is a minibus, short and low enough to pass for a van end-on."""
    mini = rng.random() < 0.2
    length = rng.uniform(6.5, 8.5) if mini else rng.uniform(8.5, 12.5)
    width = rng.uniform(2.0, 2.3) if mini else rng.uniform(2.3, 2.6)
    height = rng.uniform(2.4, 2.9) if mini else rng.uniform(2.8, 3.5)
    body = _pick(rng, _BUS_COLOURS)
    b = Builder()
    b.box((-length / 2, length / 2), (-width / 2, width / 2), (0.0, height), body, 0)
    window_bottom = height * rng.uniform(0.4, 0.55)
    window_top = height * rng.uniform(0.82, 0.92)
    n_windows = max(2, int(length / rng.uniform(1.2, 2.2)))
    side_windows(
        b,
        (-length / 2 + 0.3, length / 2 - 1.2),
        width / 2,
        (window_bottom, window_top),
        n_windows,
        0.15,
        _GLASS,
        1,
    )
    end_windows(
        b,
        length / 2,
        -length / 2,
        (-width / 2 + 0.12, width / 2 - 0.12),
        (window_bottom * rng.uniform(0.55, 1.0), window_top),
        _GLASS,
        1,
    )
    _wheels(b, length, width, 0.45, 1)
    return b


def _wheels(b: Builder, length: float, width: float, radius: float, layer: int) -> None:
    """Dark wheels on both long sides, a third of the length from the centre."""
    for x in (-length * 0.33, length * 0.33):
        for sign in (-1.0, 1.0):
            side_quad(
                b,
                1,
                sign,
                sign * width / 2,
                (x - radius, x + radius),
                (0.0, 1.7 * radius),
                np.array([20.0, 20.0, 20.0]),
                layer,
            )


def _make_person(rng: np.random.Generator) -> Builder:
    """Two legs apart, a torso with arms, a small head with hair: tall, thin and small.

    Stretched to a square crop a person must still not look like a car (a wide body under a
    narrower cabin), so the silhouette is the other way round: narrow legs with a gap, wide
    shoulders, a narrow head.
    """
    height = rng.uniform(1.45, 1.95)
    shoulders = height * rng.uniform(0.2, 0.26)
    depth = shoulders * rng.uniform(0.45, 0.6)
    hip = height * rng.uniform(0.45, 0.5)
    neck = height * 0.83
    head = height * rng.uniform(0.1, 0.12)
    leg = shoulders * rng.uniform(0.28, 0.34)
    arm = shoulders * rng.uniform(0.18, 0.24)
    gap = shoulders * rng.uniform(0.08, 0.25) / 2
    stride = rng.uniform(0.0, 0.25) * height  # legs apart front to back when walking
    pants = _pick(rng, _CLOTHES_COLOURS)
    shirt = _pick(rng, _CLOTHES_COLOURS)
    skin = _pick(rng, _SKIN_COLOURS, jitter=10.0)
    hair = _pick(rng, _SKIN_COLOURS[2:], jitter=10.0) * 0.5
    b = Builder()
    # The object frame's x is the walking direction; the body is wide across y.
    front, back = (
        (-depth / 2 + stride / 2, depth / 2 + stride / 2),
        (-depth / 2 - stride / 2, depth / 2 - stride / 2),
    )
    b.box(back, (-gap - leg, -gap), (0.0, hip), pants, 0)
    b.box(front, (gap, gap + leg), (0.0, hip), pants, 0)
    torso = (-depth / 2, depth / 2)
    b.box(torso, (-shoulders / 2, shoulders / 2), (hip, neck), shirt, 1)
    sleeves = shirt if rng.random() < 0.5 else skin
    arm_x = (-depth / 3, depth / 3)
    b.box(arm_x, (-shoulders / 2 - arm, -shoulders / 2), (hip * 0.85, neck - 0.03), sleeves, 1)
    b.box(arm_x, (shoulders / 2, shoulders / 2 + arm), (hip * 0.85, neck - 0.03), sleeves, 1)
    top = neck + 0.04 + head
    b.box((-head / 2, head / 2), (-head / 2, head / 2), (neck + 0.04, top), skin, 2)
    b.box(
        (-head / 2 - 0.01, head / 2 + 0.01),
        (-head / 2 - 0.01, head / 2 + 0.01),
        (top - head * 0.25, top + 0.02),
        hair,
        3,
    )
    return b


_MAKERS: tuple[Callable[[np.random.Generator], Builder], ...] = (
    _make_car,
    _make_bus,
    _make_person,
)


def make_prop(rng: np.random.Generator) -> Builder:
    """Static street furniture: lamp posts (thin and tall, like a person), trees, bins."""
    b = Builder()
    kind = rng.integers(3)
    if kind == 0:  # lamp post
        h = rng.uniform(3.5, 6.0)
        grey = _pick(rng, _VEHICLE_COLOURS[[1, 2, 3]], 10.0)
        b.box((-0.08, 0.08), (-0.08, 0.08), (0.0, h), grey, 0)
        b.box((-0.15, 0.6), (-0.12, 0.12), (h, h + 0.15), grey, 1)
    elif kind == 1:  # tree: trunk and crown
        h = rng.uniform(2.0, 3.5)
        w = rng.uniform(1.5, 3.0)
        b.box((-0.15, 0.15), (-0.15, 0.15), (0.0, h), np.array([90.0, 65.0, 40.0]), 0)
        green = np.array([40.0, 100.0, 40.0]) + rng.normal(0, 15, 3)
        b.box((-w / 2, w / 2), (-w / 2, w / 2), (h, h + w * rng.uniform(0.8, 1.3)), green, 1)
    else:  # bin or box
        s = rng.uniform(0.5, 1.2)
        b.box((-s / 2, s / 2), (-s / 2, s / 2), (0.0, s * 1.3), _pick(rng, _BUS_COLOURS), 0)
    return b


def make_object(rng: np.random.Generator, label: int, xy: np.ndarray) -> Mesh:
    return _MAKERS[label](rng).place(xy, rng.uniform(0, 2 * math.pi), label)
