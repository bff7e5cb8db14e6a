"""The fixed cameras: their pose and projection, and the backdrop each sees (ground, sky,
buildings, foliage)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ddnn.data.synth.settings import CameraSpec

# ------------------------------------------------------------------------------ cameras


@dataclass
class Camera:
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


def camera_eye(spec: CameraSpec, azimuth_deg: float) -> np.ndarray:
    a = math.radians(azimuth_deg)
    return np.array([spec.distance_m * math.cos(a), spec.distance_m * math.sin(a), spec.height_m])


def make_camera(spec: CameraSpec, azimuth_deg: float, rng: np.random.Generator) -> Camera:
    eye = camera_eye(spec, azimuth_deg)
    rotation = _look_at(eye, np.array([*spec.aim_xy, 0.8]))
    rvec, _ = cv2.Rodrigues(rotation)
    w, h = spec.width_px, spec.height_px
    focal = (w / 2) / math.tan(math.radians(spec.fov_deg) / 2)
    matrix = np.array([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]])
    empty = np.zeros((h, w), np.uint8)
    cam = Camera(
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


def _render_backdrop(cam: Camera, rng: np.random.Generator) -> np.ndarray:
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
        cv2.fillConvexPoly(frame, subpixel(pixels[i]), colour.tolist(), cv2.LINE_AA, 4)
    noise = rng.normal(0, 10, (h // 8 + 1, w // 8 + 1)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(frame + noise[..., None], 0, 255).astype(np.uint8)


def _render_foliage(cam: Camera, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def subpixel(pixels: np.ndarray) -> np.ndarray:
    """Points for OpenCV's drawing functions with 4 fractional bits (``shift=4``)."""
    return np.round(pixels * 16.0).astype(np.int32)


def _overlaps(pixels: np.ndarray, w: float, h: float) -> bool:
    lo, hi = pixels.min(0), pixels.max(0)
    return bool(lo[0] < w and lo[1] < h and hi[0] > 0 and hi[1] > 0)
