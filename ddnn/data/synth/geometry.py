"""Objects as boxes: meshes of quads with normals, and a builder for the boxes, side panels
and windows that the objects are made of."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- geometry


@dataclass
class Mesh:
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


class Builder:
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

    def place(self, xy: np.ndarray, heading: float, label: int) -> Mesh:
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
        return Mesh(
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


def side_quad(
    b: Builder,
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


def side_windows(
    b: Builder,
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
            side_quad(b, 1, sign, sign * half_width, (a, c), z, colour, layer)


def end_windows(
    b: Builder,
    x_front: float,
    x_back: float,
    y: tuple[float, float],
    z: tuple[float, float],
    colour: np.ndarray,
    layer: int,
) -> None:
    """Windscreen and rear window (the x = front/back faces)."""
    for x, sign in ((x_front, 1.0), (x_back, -1.0)):
        side_quad(b, 0, sign, x, y, z, colour, layer)


# Albedo palettes. They overlap between classes on purpose: colour alone must not give the
# class away (white cars and white buses, red coats and red cars).
