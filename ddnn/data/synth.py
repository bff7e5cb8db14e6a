"""Synthetic multi-view multi-camera (MVMC-like) data set, rendered with OpenCV.

The paper's MVMC data set cannot be downloaded here, so this module renders a stand-in with
the same format and, more importantly, the same reasons for being hard:

* Each sample is ONE object (car, bus or person) seen at one instant by several fixed
  cameras. A camera's image is the object's bounding box cut from its frame and resized to
  32x32, so apparent size is lost: class must come from shape, proportions and appearance.
* A car and a bus look alike end-on (only proportions and windows differ); a person is tall
  and thin but small, and blurred when far away.
* Cameras differ in distance, height, field of view, resolution, blur, noise and clutter, so
  some are much better placed than others.
* The object leaves some cameras' fields of view, is hidden behind other objects or is too
  small to see: that camera's crop is all zeros and its label is ``ABSENT``.

Scene model (world units are metres, z is up, the ground is z = 0):

* The world is fixed for all seeds: cameras on a ring around a plaza, their backdrops (ground
  tiles seen in perspective, sky, buildings on the horizon, foliage in front of some lenses)
  and static props (lamp posts, trees, bins). A fixed site is what real fixed cameras see, and
  it lets a model trained on one seed be tested on another.
* Per sample: a target object made of boxes (car = low body + glass cabin, bus = long tall
  box with a row of windows, person = legs + torso + head), with size, colour and heading drawn
  from per-class ranges that overlap; a few moving distractors (other cars, buses, persons);
  a random sun direction and brightness.
* Per camera: the objects are projected with ``cv2.projectPoints``, shaded by face normal
  against the sun, drawn back to front (painter's algorithm) with ``cv2.fillConvexPoly`` on
  the camera's backdrop, cast a shadow, get clutter, blur and sensor noise; then the target's
  bounding box (grown by a random margin, clipped to the frame) is cropped and resized.

Only the crop around the target is rendered (at most ``_MAX_CANVAS`` pixels on a side), which
keeps generation fast: about 7 s for 2000 samples on one core.

Output follows the original ``MVMC.npz``: ``X`` float32 ``(N, cameras, 3, 32, 32)`` with RGB
pixel values 0..255, ``y`` int32 ``(N, cameras)`` with 0 car, 1 bus, 2 person, 3 absent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ddnn.data import MVMC_CLASSES

CLASSES: tuple[str, ...] = tuple(MVMC_CLASSES)
ABSENT: int = len(MVMC_CLASSES)
IMAGE_SIZE: int = 32
# Bumped whenever the images a seed gives change, so that caches keyed by it go stale.
VERSION: int = 2

# How often each class is the target. MVMC is imbalanced (paper Fig. 6); mildly so here.
CLASS_PROBS: tuple[float, ...] = (0.40, 0.25, 0.35)

# The world (cameras, backdrops, props) is the same for every seed; see the module docstring.
_WORLD_SEED = 20170605
# Targets stand inside this disk around the plaza's centre.
_PLAZA_RADIUS_M = 14.0
# Moving distractors stand inside this larger disk.
_DISTRACTOR_RADIUS_M = 22.0
# Largest side of the canvas a crop is rendered on before the final resize to 32x32.
_MAX_CANVAS = 64
# A camera sees the target only if at least this share of its silhouette is unoccluded ...
_MIN_VISIBLE_FRACTION = 0.3
# ... and its bounding box is at least this many frame pixels tall and wide.
_MIN_BOX_HEIGHT_PX = 6.0
_MIN_BOX_WIDTH_PX = 3.0
# Shadows darken the ground by this factor.
_SHADOW_FACTOR = 0.6


@dataclass(frozen=True)
class CameraSpec:
    """Placement and sensor quality of one fixed camera; these are the hardness knobs.

    Far, high, narrow or low-resolution cameras see small objects (few pixels) and lose them
    out of frame more often; blur, noise and clutter hide the cues that tell classes apart.
    """

    azimuth_deg: float  # where on the ring around the plaza the camera stands
    distance_m: float  # horizontal distance from the plaza centre
    height_m: float  # mounting height
    fov_deg: float  # horizontal field of view
    width_px: int  # frame resolution
    height_px: int
    aim_xy: tuple[float, float]  # ground point the camera looks at (off-centre: more absences)
    blur: float  # blur sigma in pixels of the 32x32 crop (focus, compression, motion)
    noise: float  # sensor noise sigma in grey levels, at the frame's own resolution
    contrast: float  # 1 is clean; less washes the crop out towards grey (haze, dirty lens)
    clutter: float  # mean number of random clutter shapes per crop
    foliage: float  # share of the frame covered by leaves in front of the lens


# Six cameras, deliberately unequal (paper Fig. 8: the best device over 70 %, the worst under
# 40 %). Camera 0 stands close with a wide lens; camera 1 is far, high and coarse.
DEFAULT_CAMERAS: tuple[CameraSpec, ...] = (
    # azimuth, distance, height, fov, width, height, aim, blur, noise, contrast, clutter, foliage
    CameraSpec(0, 17, 3.5, 60, 640, 480, (0.0, 0.0), 0.5, 4, 1.0, 1.0, 0.00),
    CameraSpec(60, 50, 18.0, 28, 240, 180, (13.0, -11.0), 2.5, 20, 0.5, 3.0, 0.05),
    CameraSpec(120, 28, 6.0, 34, 320, 240, (-5.0, 6.0), 0.7, 8, 1.0, 2.0, 0.00),
    CameraSpec(180, 34, 9.0, 32, 320, 240, (3.0, 5.0), 0.9, 10, 0.9, 2.5, 0.20),
    CameraSpec(240, 20, 1.6, 40, 200, 150, (-5.0, -7.0), 1.2, 12, 0.8, 2.0, 0.00),
    CameraSpec(300, 26, 5.0, 40, 640, 480, (0.0, -1.0), 0.5, 4, 1.0, 1.0, 0.00),
)


# ----------------------------------------------------------------------------- geometry


@dataclass
class _Mesh:
    """An object as flat quads: the unit both the painter's algorithm and shading work on.

    ``layers`` orders the parts of one object bottom-up (a cabin is drawn after the body it
    sits on, a window after the side it is on); inside a layer faces go far to near. Back
    faces are culled, so the visible faces of one convex box never overlap.
    """

    vertices: np.ndarray  # (V, 3) world coordinates
    quads: np.ndarray  # (F, 4) vertex indices, counter-clockwise seen from outside
    face_centres: np.ndarray  # (F, 3) for back-face culling and depth order
    normals: np.ndarray  # (F, 3) outward unit normals
    colours: np.ndarray  # (F, 3) RGB albedo 0..255
    layers: np.ndarray  # (F,) drawing order inside the object
    label: int  # class index, or -1 for props
    centre: np.ndarray  # (3,) centre of the footprint, for ordering whole objects
    radius: float  # footprint half-diagonal, to keep objects from overlapping
    box: np.ndarray  # (8, 3) corners of the world-aligned bounding box, for quick culling


# Corner order of a box: bottom face 0-3, top face 4-7, each counter-clockwise from above.
_BOX_QUADS = np.array(
    [
        [0, 3, 2, 1],  # bottom (normal -z)
        [4, 5, 6, 7],  # top (+z)
        [0, 1, 5, 4],  # front (-y in the box frame)
        [1, 2, 6, 5],  # right (+x)
        [2, 3, 7, 6],  # back (+y)
        [3, 0, 4, 7],  # left (-x)
    ]
)
_BOX_NORMALS = np.array(
    [[0, 0, -1], [0, 0, 1], [0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0]], dtype=np.float64
)
_DECAL_QUAD = np.array([[0, 1, 2, 3]])


def _rotation_z(heading: float) -> np.ndarray:
    c, s = math.cos(heading), math.sin(heading)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _Builder:
    """Collects boxes and flat decals (windows) in an object's own frame, then places it.

    Object frame: x along the length (the heading), y across, z up, origin at the centre of
    the footprint on the ground.
    """

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.quads: list[np.ndarray] = []
        self.normals: list[np.ndarray] = []
        self.colours: list[np.ndarray] = []  # one per face
        self.layers: list[int] = []  # one per face
        self.n_vertices = 0

    def box(
        self,
        x: tuple[float, float],
        y: tuple[float, float],
        z: tuple[float, float],
        colour: np.ndarray,
        layer: int,
    ) -> None:
        """An axis-aligned box spanning x, y and z (min, max) in the object frame."""
        (x0, x1), (y0, y1), (z0, z1) = x, y, z
        corners = np.array(
            [
                [x0, y0, z0],
                [x1, y0, z0],
                [x1, y1, z0],
                [x0, y1, z0],
                [x0, y0, z1],
                [x1, y0, z1],
                [x1, y1, z1],
                [x0, y1, z1],
            ]
        )
        self._add(corners, _BOX_QUADS, _BOX_NORMALS, colour, layer)

    def decal(
        self,
        corners: np.ndarray,
        normal: tuple[float, float, float],
        colour: np.ndarray,
        layer: int,
    ) -> None:
        """A flat quad (window, windscreen) lifted 2 cm off a box face along its normal."""
        n = np.array([normal])
        self._add(corners + 0.02 * n, _DECAL_QUAD, n, colour, layer)

    def _add(
        self,
        corners: np.ndarray,
        quads: np.ndarray,
        normals: np.ndarray,
        colour: np.ndarray,
        layer: int,
    ) -> None:
        self.vertices.append(corners)
        self.quads.append(quads + self.n_vertices)
        self.normals.append(normals)
        self.colours += [colour] * len(quads)
        self.layers += [layer] * len(quads)
        self.n_vertices += len(corners)

    def place(self, xy: np.ndarray, heading: float, label: int) -> _Mesh:
        """Rotate by ``heading`` about z and move to ``xy`` on the ground."""
        rot = _rotation_z(heading)
        offset = np.array([xy[0], xy[1], 0.0])
        vertices = np.concatenate(self.vertices) @ rot.T + offset
        radius = float(np.max(np.linalg.norm(vertices[:, :2] - offset[:2], axis=1)))
        lo, hi = vertices.min(0), vertices.max(0)
        box = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        quads = np.concatenate(self.quads)
        return _Mesh(
            vertices=vertices,
            quads=quads,
            face_centres=vertices[quads].mean(1),
            normals=np.concatenate(self.normals) @ rot.T,
            colours=np.array(self.colours, dtype=np.float64),
            layers=np.array(self.layers),
            label=label,
            centre=offset,
            radius=radius,
            box=box,
        )


def _side_quad(
    b: _Builder,
    axis: int,
    sign: float,
    at: float,
    u: tuple[float, float],
    z: tuple[float, float],
    colour: np.ndarray,
    layer: int,
) -> None:
    """A vertical decal on the box face where coordinate ``axis`` (0: x, 1: y) is ``at``,
    spanning ``u`` along the other horizontal axis and ``z`` up, facing ``sign`` along
    ``axis``."""
    corners = [[u[0], z[0]], [u[1], z[0]], [u[1], z[1]], [u[0], z[1]]]
    for corner in corners:
        corner.insert(axis, at)
    normal = [0.0, 0.0, 0.0]
    normal[axis] = sign
    b.decal(np.array(corners), (normal[0], normal[1], normal[2]), colour, layer)


def _side_windows(
    b: _Builder,
    x: tuple[float, float],
    half_width: float,
    z: tuple[float, float],
    n: int,
    gap: float,
    colour: np.ndarray,
    layer: int,
) -> None:
    """A row of ``n`` windows along both long sides (the y = +-half_width faces)."""
    edges = np.linspace(x[0], x[1], n + 1)
    for a, c in zip(edges[:-1] + gap / 2, edges[1:] - gap / 2, strict=True):
        for sign in (-1.0, 1.0):
            _side_quad(b, 1, sign, sign * half_width, (a, c), z, colour, layer)


def _end_windows(
    b: _Builder,
    x_front: float,
    x_back: float,
    y: tuple[float, float],
    z: tuple[float, float],
    colour: np.ndarray,
    layer: int,
) -> None:
    """Windscreen and rear window (the x = front/back faces)."""
    for x, sign in ((x_front, 1.0), (x_back, -1.0)):
        _side_quad(b, 0, sign, x, y, z, colour, layer)


# Albedo palettes. They overlap between classes on purpose: colour alone must not give the
# class away (white cars and white buses, red coats and red cars).
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


def _make_car(rng: np.random.Generator) -> _Builder:
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
    b = _Builder()
    b.box((-length / 2, length / 2), (-width / 2, width / 2), (0.0, body_top), body, 0)
    _wheels(b, length, width, min(0.33, body_top * 0.6), 1)
    # Headlights / tail lights on the ends.
    light = np.array([230.0, 220.0, 180.0])
    for y in ((-width * 0.42, -width * 0.25), (width * 0.25, width * 0.42)):
        _end_windows(b, length / 2, -length / 2, y, (body_top * 0.55, body_top * 0.78), light, 1)
    x_cab = (cabin_back, cabin_back + cabin_len)
    y_cab = (-width / 2 + inset, width / 2 - inset)
    b.box(x_cab, y_cab, (body_top, height), body, 2)
    # The cabin's sides and ends are mostly glass.
    n_windows = int(rng.integers(2, 5)) if van else int(rng.integers(1, 3))
    _side_windows(
        b,
        (x_cab[0] + 0.1, x_cab[1] - 0.1),
        y_cab[1],
        (body_top + 0.08, height - 0.1),
        n_windows,
        0.12,
        _GLASS,
        3,
    )
    _end_windows(
        b,
        x_cab[1],
        x_cab[0],
        (y_cab[0] + 0.08, y_cab[1] - 0.08),
        (body_top + 0.06, height - 0.1),
        _GLASS,
        3,
    )
    return b


def _make_bus(rng: np.random.Generator) -> _Builder:
    """One long tall box with a row of side windows and a big windscreen. One bus in five
    is a minibus, short and low enough to pass for a van end-on."""
    mini = rng.random() < 0.2
    length = rng.uniform(6.5, 8.5) if mini else rng.uniform(8.5, 12.5)
    width = rng.uniform(2.0, 2.3) if mini else rng.uniform(2.3, 2.6)
    height = rng.uniform(2.4, 2.9) if mini else rng.uniform(2.8, 3.5)
    body = _pick(rng, _BUS_COLOURS)
    b = _Builder()
    b.box((-length / 2, length / 2), (-width / 2, width / 2), (0.0, height), body, 0)
    window_bottom = height * rng.uniform(0.4, 0.55)
    window_top = height * rng.uniform(0.82, 0.92)
    n_windows = max(2, int(length / rng.uniform(1.2, 2.2)))
    _side_windows(
        b,
        (-length / 2 + 0.3, length / 2 - 1.2),
        width / 2,
        (window_bottom, window_top),
        n_windows,
        0.15,
        _GLASS,
        1,
    )
    _end_windows(
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


def _wheels(b: _Builder, length: float, width: float, radius: float, layer: int) -> None:
    """Dark wheels on both long sides, a third of the length from the centre."""
    for x in (-length * 0.33, length * 0.33):
        for sign in (-1.0, 1.0):
            _side_quad(
                b,
                1,
                sign,
                sign * width / 2,
                (x - radius, x + radius),
                (0.0, 1.7 * radius),
                np.array([20.0, 20.0, 20.0]),
                layer,
            )


def _make_person(rng: np.random.Generator) -> _Builder:
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
    b = _Builder()
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


_MAKERS: tuple[Callable[[np.random.Generator], _Builder], ...] = (
    _make_car,
    _make_bus,
    _make_person,
)


def _make_prop(rng: np.random.Generator) -> _Builder:
    """Static street furniture: lamp posts (thin and tall, like a person), trees, bins."""
    b = _Builder()
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


def _make_object(rng: np.random.Generator, label: int, xy: np.ndarray) -> _Mesh:
    return _MAKERS[label](rng).place(xy, rng.uniform(0, 2 * math.pi), label)


# ------------------------------------------------------------------------------ cameras


@dataclass
class _Camera:
    """A camera with its pose, intrinsics and the static frame it sees."""

    spec: CameraSpec
    eye: np.ndarray  # (3,) world position
    rotation: np.ndarray  # (3, 3) world -> camera
    rvec: np.ndarray  # the same rotation as OpenCV wants it
    tvec: np.ndarray
    matrix: np.ndarray  # (3, 3) intrinsics
    backdrop: np.ndarray  # (H, W, 3) uint8 RGB: ground, sky, buildings
    foliage: np.ndarray  # (H, W) uint8 0/1: leaves in front of the lens
    foliage_rgb: np.ndarray  # (H, W, 3) uint8 colour of those leaves

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame pixel coordinates (P, 2) and camera-space depth (P,) of world points.

        Points behind the camera get meaningless pixels; callers check the depth first.
        """
        depth = (points - self.eye) @ self.rotation[2]
        pixels, _ = cv2.projectPoints(points, self.rvec, self.tvec, self.matrix, None)
        return pixels.reshape(-1, 2), depth


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera rotation for OpenCV's convention: x right, y down, z forward."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def _camera_eye(spec: CameraSpec, azimuth_deg: float) -> np.ndarray:
    a = math.radians(azimuth_deg)
    return np.array([spec.distance_m * math.cos(a), spec.distance_m * math.sin(a), spec.height_m])


def _make_camera(spec: CameraSpec, azimuth_deg: float, rng: np.random.Generator) -> _Camera:
    eye = _camera_eye(spec, azimuth_deg)
    rotation = _look_at(eye, np.array([*spec.aim_xy, 0.8]))
    rvec, _ = cv2.Rodrigues(rotation)
    w, h = spec.width_px, spec.height_px
    focal = (w / 2) / math.tan(math.radians(spec.fov_deg) / 2)
    matrix = np.array([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]])
    empty = np.zeros((h, w), np.uint8)
    cam = _Camera(
        spec,
        eye,
        rotation,
        rvec,
        -rotation @ eye,
        matrix,
        np.zeros((h, w, 3), np.uint8),
        empty,
        np.zeros((h, w, 3), np.uint8),
    )
    cam.backdrop = _render_backdrop(cam, rng)
    cam.foliage, cam.foliage_rgb = _render_foliage(cam, rng)
    return cam


_SKY_TOP = np.array([110.0, 150.0, 210.0])
_SKY_LOW = np.array([200.0, 215.0, 230.0])
_ROAD = np.array([95.0, 95.0, 100.0])
_PAVING = np.array([165.0, 150.0, 130.0])
_GRASS = np.array([80.0, 120.0, 60.0])
_ROAD_MARK = np.array([215.0, 215.0, 205.0])


def _render_backdrop(cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """The static frame behind the objects: sky, buildings on the horizon, tiled ground.

    Drawn once per camera. The ground is made of 3 m tiles projected through the camera so
    that it has the same perspective as the objects standing on it.
    """
    h, w = cam.spec.height_px, cam.spec.width_px
    frame = np.zeros((h, w, 3), np.uint8)
    # The horizon is where points at the camera's height, infinitely far ahead, project.
    ahead = cam.rotation[2] * np.array([1.0, 1.0, 0.0])
    horizon_px, _ = cam.project(cam.eye + 1e5 * ahead / np.linalg.norm(ahead))
    horizon = int(np.clip(horizon_px[0, 1], 0, h))
    for row in range(horizon):
        t = row / max(horizon, 1)
        frame[row] = (_SKY_TOP * (1 - t) + _SKY_LOW * t).astype(np.uint8)
    frame[horizon:] = _PAVING.astype(np.uint8)
    # Buildings standing on the horizon, with window grids.
    x = int(rng.integers(-40, 0))
    while x < w and horizon > 0:
        bw, bh = int(rng.integers(w // 12, w // 4)), int(rng.integers(h // 10, h // 3))
        colour = rng.uniform(90, 200) * np.array([1.0, 0.95, 0.9]) + rng.normal(0, 12, 3)
        top = horizon - bh
        cv2.rectangle(frame, (x, top), (x + bw, horizon), colour.tolist(), -1)
        for wy in range(top + 4, horizon - 4, 9):
            for wx in range(x + 3, x + bw - 4, 8):
                cv2.rectangle(frame, (wx, wy), (wx + 3, wy + 4), (60, 70, 85), -1)
        x += bw + int(rng.integers(0, w // 10))
    # Ground tiles: an asphalt road with a dashed centre line along x, paving, grass far out.
    tile = 3.0
    grid = np.arange(-90.0, 90.0, tile)
    gx, gy = (a.ravel() for a in np.meshgrid(grid, grid, indexing="ij"))
    offsets = np.array([[0.0, 0.0], [tile, 0.0], [tile, tile], [0.0, tile]])
    corners = np.stack([gx, gy], 1)[:, None, :] + offsets[None]  # (T, 4, 2)
    corners = np.concatenate([corners, np.zeros((len(gx), 4, 1))], 2)
    pixels, depth = cam.project(corners.reshape(-1, 3))
    pixels, depth = pixels.reshape(-1, 4, 2), depth.reshape(-1, 4)
    for i in range(len(gx)):
        if depth[i].min() < 0.5 or not _overlaps(pixels[i], w, h):
            continue
        cx, cy = gx[i] + tile / 2, gy[i] + tile / 2
        if abs(cy) < 7.0:
            base = _ROAD_MARK if abs(cy) < tile / 2 and int(gx[i] / tile) % 2 == 0 else _ROAD
        elif math.hypot(cx, cy) < 45.0:
            base = _PAVING
        else:
            base = _GRASS
        colour = base * rng.uniform(0.9, 1.1) + rng.normal(0, 4, 3)
        cv2.fillConvexPoly(frame, _fixed(pixels[i]), colour.tolist(), cv2.LINE_AA, 4)
    noise = rng.normal(0, 10, (h // 8 + 1, w // 8 + 1)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(frame + noise[..., None], 0, 255).astype(np.uint8)


def _render_foliage(cam: _Camera, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Leaves hanging into the top of the frame, covering ``spec.foliage`` of it."""
    h, w = cam.spec.height_px, cam.spec.width_px
    mask = np.zeros((h, w), np.uint8)
    colour = np.zeros((h, w, 3), np.uint8)
    x_branch = rng.uniform(0.2, 0.8) * w
    while mask.mean() < cam.spec.foliage:
        centre = (int(x_branch + rng.normal(0, w * 0.3)), int(abs(rng.normal(0, h * 0.35))))
        axes = (int(rng.uniform(4, w / 14)), int(rng.uniform(3, h / 18)))
        green = (np.array([35.0, 85.0, 30.0]) + rng.normal(0, 15, 3)).tolist()
        angle = rng.uniform(0, 180)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
        cv2.ellipse(colour, centre, axes, angle, 0, 360, green, -1)
    return mask, colour


def _fixed(pixels: np.ndarray) -> np.ndarray:
    """Points for OpenCV's drawing functions with 4 fractional bits (``shift=4``)."""
    return np.round(pixels * 16.0).astype(np.int32)


def _overlaps(pixels: np.ndarray, w: float, h: float) -> bool:
    lo, hi = pixels.min(0), pixels.max(0)
    return bool(lo[0] < w and lo[1] < h and hi[0] > 0 and hi[1] > 0)


# ------------------------------------------------------------------------------ the world


@dataclass
class _World:
    """What stays fixed from sample to sample: the cameras and the street furniture."""

    cameras: list[_Camera]
    props: list[_Mesh]


def _camera_specs(n_cameras: int) -> list[tuple[CameraSpec, float]]:
    """Spec and azimuth per camera. The first six are ``DEFAULT_CAMERAS``; more cameras reuse
    their specs at shifted azimuths, so any number of devices gets a mix of good and poor
    viewpoints."""
    out = []
    for i in range(n_cameras):
        spec = DEFAULT_CAMERAS[i % len(DEFAULT_CAMERAS)]
        out.append((spec, spec.azimuth_deg + 23.0 * (i // len(DEFAULT_CAMERAS))))
    return out


def _build_world(n_cameras: int) -> _World:
    rng = np.random.default_rng(_WORLD_SEED)
    specs = _camera_specs(n_cameras)
    eyes = [_camera_eye(spec, az)[:2] for spec, az in specs]
    props: list[_Mesh] = []
    while len(props) < 14:
        r, a = rng.uniform(_PLAZA_RADIUS_M + 2.0, 30.0), rng.uniform(0, 2 * math.pi)
        xy = np.array([r * math.cos(a), r * math.sin(a)])
        prop = _make_prop(rng).place(xy, rng.uniform(0, 2 * math.pi), -1)
        if min(np.linalg.norm(xy - e) for e in eyes) > 10.0:  # not right in front of a lens
            props.append(prop)
    cameras = [_make_camera(spec, az, rng) for spec, az in specs]
    return _World(cameras, props)


# ------------------------------------------------------------------------------ a sample


@dataclass
class _Scene:
    """One instant: the target, everything else that may be in the way, and the light."""

    target: _Mesh
    others: list[_Mesh]  # distractors and props
    sun: np.ndarray  # (3,) unit vector towards the sun
    ambient: float  # share of light that does not depend on the face's orientation
    brightness: float  # overall exposure of this instant


def _free(mesh: _Mesh, others: list[_Mesh]) -> bool:
    """Whether ``mesh`` keeps clear of all ``others`` (footprint circles 0.3 m apart)."""
    if not others:
        return True
    centres = np.array([o.centre for o in others])
    radii = np.array([o.radius for o in others])
    gaps = np.linalg.norm(centres - mesh.centre, axis=1) - radii - mesh.radius
    return bool(gaps.min() > 0.3)


def _random_point(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Uniform in a disk."""
    r, a = radius * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    return np.array([r * math.cos(a), r * math.sin(a)])


def _draw_scene(rng: np.random.Generator, world: _World) -> _Scene:
    label = int(rng.choice(len(CLASSES), p=CLASS_PROBS))
    while True:
        target = _make_object(rng, label, _random_point(rng, _PLAZA_RADIUS_M))
        if _free(target, world.props):
            break
    others = list(world.props)
    # Moving distractors; some close to the target, where they occlude it in some views and
    # intrude into its crop in others.
    for _ in range(int(rng.integers(2, 7))):
        if rng.random() < 0.3:
            xy = target.centre[:2] + _random_point(rng, 7.0)
        else:
            xy = _random_point(rng, _DISTRACTOR_RADIUS_M)
        kind = int(rng.choice(len(CLASSES), p=CLASS_PROBS))
        distractor = _make_object(rng, kind, xy)
        if _free(distractor, [target, *others]):
            others.append(distractor)
    elevation = rng.uniform(0.35, 1.3)
    azimuth = rng.uniform(0, 2 * math.pi)
    sun = np.array(
        [
            math.cos(azimuth) * math.cos(elevation),
            math.sin(azimuth) * math.cos(elevation),
            math.sin(elevation),
        ]
    )
    return _Scene(target, others, sun, rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.25))


def _shade(mesh: _Mesh, scene: _Scene) -> np.ndarray:
    """Lambertian face colours: faces turned to the sun are bright, others get ambient."""
    lambert = np.clip(mesh.normals @ scene.sun, 0.0, 1.0)
    return mesh.colours * (scene.ambient + (1.0 - scene.ambient) * lambert)[:, None]


def _shadow(mesh: _Mesh, sun: np.ndarray) -> np.ndarray:
    """The object's vertices pushed along the sun's rays down to the ground."""
    v = mesh.vertices
    return v - (v[:, 2] / sun[2])[:, None] * sun[None]


def _draw_mesh(
    canvas: np.ndarray,
    mesh: _Mesh,
    pixels: np.ndarray,
    colours: np.ndarray,
    cam: _Camera,
    mask: np.ndarray | None,
    mask_value: int,
) -> None:
    """Painter's algorithm inside one object: cull back faces, draw layer by layer, far
    faces first. ``pixels`` are the mesh's vertices on the canvas. Also paints the object's
    silhouette into ``mask`` with ``mask_value``, to measure how much of the target shows."""
    centres = mesh.face_centres
    facing = np.einsum("fk,fk->f", mesh.normals, cam.eye - centres) > 0
    faces = np.flatnonzero(facing)
    depth = (centres[faces] - cam.eye) @ cam.rotation[2]
    faces = faces[np.lexsort((-depth, mesh.layers[faces]))]
    points = _fixed(pixels)[mesh.quads[faces]]  # (faces, 4, 2)
    for pts, f in zip(points, faces, strict=True):
        cv2.fillConvexPoly(canvas, pts, colours[f].tolist(), cv2.LINE_AA, 4)
        if mask is not None:
            cv2.fillConvexPoly(mask, pts, mask_value, cv2.LINE_8, 4)


def _target_box(cam: _Camera, target: _Mesh) -> tuple[np.ndarray, np.ndarray] | None:
    """The target's bounding box in the frame (clipped), or None when the camera cannot
    see it: its centre out of frame, or its box too few pixels."""
    w, h = cam.spec.width_px, cam.spec.height_px
    pixels, depth = cam.project(np.vstack([target.vertices, target.vertices.mean(0)]))
    cx, cy = pixels[-1]
    if depth.min() < 0.5 or not (0 <= cx < w and 0 <= cy < h):
        return None
    lo = np.maximum(pixels[:-1].min(0), 0.0)
    hi = np.minimum(pixels[:-1].max(0), [w, h])
    size = hi - lo
    if size[1] < _MIN_BOX_HEIGHT_PX or size[0] < _MIN_BOX_WIDTH_PX:
        return None
    return lo, hi


def _in_crop(cam: _Camera, others: list[_Mesh], x0: int, y0: int, x1: int, y1: int) -> list[_Mesh]:
    """The objects whose bounding boxes reach into the crop (a cheap, conservative test)."""
    if not others:
        return []
    p, d = cam.project(np.concatenate([o.box for o in others]))
    p, d = p.reshape(-1, 8, 2), d.reshape(-1, 8)
    reach = (d.min(1) > 0.5) & (p.min(1) < [x1, y1]).all(1) & (p.max(1) > [x0, y0]).all(1)
    return [o for o, keep in zip(others, reach, strict=True) if keep]


def _render_view(cam: _Camera, scene: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """The 3x32x32 crop of the target as this camera sees it, or None when it does not.

    None when the target's centre is out of frame, its box is only a few pixels, or less
    than ``_MIN_VISIBLE_FRACTION`` of its silhouette is unoccluded.
    """
    spec, target = cam.spec, scene.target
    w, h = spec.width_px, spec.height_px
    box = _target_box(cam, target)
    if box is None:
        return None
    # The annotated box: the object's box grown by a random margin (annotations are loose),
    # clipped to the frame.
    lo, hi = box
    grow = (hi - lo) * rng.uniform(-0.08, 0.3, (2, 2))  # (side, axis)
    x0, y0 = np.floor(np.maximum(lo - grow[0], 0.0)).astype(int)
    x1, y1 = np.ceil(np.minimum(hi + grow[1], [w, h])).astype(int)
    crop_w, crop_h = max(x1 - x0, 1), max(y1 - y0, 1)
    # Render only the crop, at its own resolution (small when the object is far) capped at
    # _MAX_CANVAS pixels: the final 32x32 cannot show more.
    scale = min(1.0, _MAX_CANVAS / max(crop_w, crop_h))
    size = (max(round(crop_w * scale), 2), max(round(crop_h * scale), 2))
    origin = np.array([x0, y0], dtype=np.float64)
    canvas = cv2.resize(cam.backdrop[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)

    # Clutter on the ground (litter, manholes, puddles), sized in frame pixels.
    for _ in range(rng.poisson(spec.clutter)):
        c = (int(rng.uniform(0, size[0]) * 16), int(rng.uniform(0, size[1]) * 16))
        axes = (int(rng.uniform(1, 8) * scale * 16) + 1, int(rng.uniform(1, 5) * scale * 16) + 1)
        colour = rng.uniform(20, 230, 3).tolist()
        cv2.ellipse(canvas, c, axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, 4)

    # The target and whatever reaches into its crop, far to near; each projected once,
    # together with its shadow.
    shown = [target, *_in_crop(cam, scene.others, x0, y0, x1, y1)]
    shown.sort(key=lambda o: -float((o.centre - cam.eye) @ cam.rotation[2]))
    projected = []
    shadow = np.zeros(canvas.shape[:2], np.uint8)
    for mesh in shown:
        p, _ = cam.project(np.vstack([mesh.vertices, _shadow(mesh, scene.sun)]))
        p = (p - origin) * scale
        n = len(mesh.vertices)
        projected.append(p[:n])
        hull = cv2.convexHull(p[n:].astype(np.float32)).reshape(-1, 2)
        cv2.fillConvexPoly(shadow, _fixed(hull), 1, cv2.LINE_8, 4)
    darker = (canvas * _SHADOW_FACTOR).astype(np.uint8)
    canvas = cv2.copyTo(darker, shadow, canvas)

    # Objects drawn after the target erase it from the mask: what is left of the target's
    # silhouette is the part that shows.
    mask = np.zeros(canvas.shape[:2], np.uint8)
    silhouette = 0
    for mesh, pixels in zip(shown, projected, strict=True):
        colours = _shade(mesh, scene)
        if mesh is target:
            _draw_mesh(canvas, mesh, pixels, colours, cam, mask, 1)
            silhouette = cv2.countNonZero(mask)
        else:
            _draw_mesh(canvas, mesh, pixels, colours, cam, mask if silhouette else None, 0)

    # Leaves in front of the lens hide whatever is behind them.
    if spec.foliage > 0 and cam.foliage[y0:y1, x0:x1].any():
        leaves = cv2.resize(cam.foliage[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST)
        leaves_rgb = cv2.resize(cam.foliage_rgb[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
        canvas[leaves > 0] = leaves_rgb[leaves > 0]
        mask[leaves > 0] = 0
    if silhouette == 0 or cv2.countNonZero(mask) < _MIN_VISIBLE_FRACTION * silhouette:
        return None
    return _sensor(canvas, spec, scene, rng)


def _sensor(
    canvas: np.ndarray, spec: CameraSpec, scene: _Scene, rng: np.random.Generator
) -> np.ndarray:
    """Exposure and white balance, noise at the frame's resolution, the resize to 32x32,
    then blur and haze. Blur is sized on the crop, not the frame, so that how blurred a crop
    looks does not tell how big the object is."""
    gain = scene.brightness * rng.normal(1.0, 0.06, 3)
    image = canvas.astype(np.float32) * gain.astype(np.float32)
    h, w = image.shape[:2]
    if w >= IMAGE_SIZE and h >= IMAGE_SIZE:
        # Shrinking averages about (w / 32) * (h / 32) noisy pixels into one; adding the
        # averaged noise after the resize is the same in distribution and much cheaper.
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        sigma = spec.noise * IMAGE_SIZE / math.sqrt(w * h)
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    else:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(spec.noise)
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
    if spec.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), spec.blur)
    haze = rng.uniform(110.0, 170.0)
    image = image * np.float32(spec.contrast) + np.float32(haze * (1.0 - spec.contrast))
    return np.clip(image, 0.0, 255.0).transpose(2, 0, 1)


# ------------------------------------------------------------------------------ public API


def synthesize(
    n_samples: int,
    seed: int = 0,
    n_cameras: int = 6,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n_samples`` multi-view samples in the ``MVMC.npz`` format.

    Returns ``X`` float32 ``(N, n_cameras, 3, 32, 32)`` with RGB values 0..255 (all zeros
    where a camera does not see the object) and ``y`` int32 ``(N, n_cameras)`` holding the
    object's class per camera, or ``ABSENT``. A scene no camera sees is drawn again, because
    such a sample carries no information and MVMC has none.

    The same seed gives the same data; different seeds give different samples of the same
    site (cameras, backdrops and props do not depend on the seed). ``progress``, if given, is
    called with the number of samples done so far.
    """
    world = _build_world(n_cameras)
    rng = np.random.default_rng(seed)
    X = np.zeros((n_samples, n_cameras, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    y = np.full((n_samples, n_cameras), ABSENT, np.int32)
    for i in range(n_samples):
        while True:
            scene = _draw_scene(rng, world)
            views = [_render_view(cam, scene, rng) for cam in world.cameras]
            if any(v is not None for v in views):
                break
        for c, view in enumerate(views):
            if view is not None:
                X[i, c] = view
                y[i, c] = scene.target.label
        if progress is not None:
            progress(i + 1)
    return X, y
