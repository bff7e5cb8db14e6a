"""A sample: the world (cameras and props, the same for every seed), a random scene in it,
and each camera's view of the target, shaded, occluded, cluttered, cropped and resized."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ddnn.data.synth.cameras import Camera, camera_eye, make_camera, subpixel
from ddnn.data.synth.geometry import Mesh
from ddnn.data.synth.objects import make_object, make_prop
from ddnn.data.synth.settings import (
    CLASS_PROBS,
    CLASSES,
    DEFAULT_CAMERAS,
    DISTRACTOR_RADIUS_M,
    IMAGE_SIZE,
    MAX_CANVAS,
    MIN_BOX_HEIGHT_PX,
    MIN_BOX_WIDTH_PX,
    MIN_VISIBLE_FRACTION,
    PLAZA_RADIUS_M,
    SHADOW_FACTOR,
    WORLD_SEED,
    CameraSpec,
)

# ------------------------------------------------------------------------------ the world


@dataclass
class _World:
    """What stays fixed from sample to sample: the cameras and the street furniture."""

    cameras: list[Camera]
    props: list[Mesh]


def _camera_specs(n_cameras: int) -> list[tuple[CameraSpec, float]]:
    """Spec and azimuth per camera. The first six are ``DEFAULT_CAMERAS``; more cameras reuse
    their specs at shifted azimuths, so any number of devices gets a mix of good and poor
    viewpoints."""
    out = []
    for i in range(n_cameras):
        spec = DEFAULT_CAMERAS[i % len(DEFAULT_CAMERAS)]
        out.append((spec, spec.azimuth_deg + 23.0 * (i // len(DEFAULT_CAMERAS))))
    return out


def build_world(n_cameras: int) -> _World:
    rng = np.random.default_rng(WORLD_SEED)
    specs = _camera_specs(n_cameras)
    eyes = [camera_eye(spec, az)[:2] for spec, az in specs]
    props: list[Mesh] = []
    while len(props) < 14:
        r, a = rng.uniform(PLAZA_RADIUS_M + 2.0, 30.0), rng.uniform(0, 2 * math.pi)
        xy = np.array([r * math.cos(a), r * math.sin(a)])
        prop = make_prop(rng).place(xy, rng.uniform(0, 2 * math.pi), -1)
        if min(np.linalg.norm(xy - e) for e in eyes) > 10.0:  # not right in front of a lens
            props.append(prop)
    cameras = [make_camera(spec, az, rng) for spec, az in specs]
    return _World(cameras, props)


# ------------------------------------------------------------------------------ a sample


@dataclass
class _Scene:
    """One instant: the target, everything else that may be in the way, and the light."""

    target: Mesh
    others: list[Mesh]  # distractors and props
    sun: np.ndarray  # (3,) unit vector towards the sun
    ambient: float  # share of light that does not depend on the face's orientation
    brightness: float  # overall exposure of this instant


def _free(mesh: Mesh, others: list[Mesh]) -> bool:
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


def draw_scene(rng: np.random.Generator, world: _World) -> _Scene:
    label = int(rng.choice(len(CLASSES), p=CLASS_PROBS))
    while True:
        target = make_object(rng, label, _random_point(rng, PLAZA_RADIUS_M))
        if _free(target, world.props):
            break
    others = list(world.props)
    # Moving distractors; some close to the target, where they occlude it in some views and
    # intrude into its crop in others.
    for _ in range(int(rng.integers(2, 7))):
        if rng.random() < 0.3:
            xy = target.centre[:2] + _random_point(rng, 7.0)
        else:
            xy = _random_point(rng, DISTRACTOR_RADIUS_M)
        kind = int(rng.choice(len(CLASSES), p=CLASS_PROBS))
        distractor = make_object(rng, kind, xy)
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


def _shade(mesh: Mesh, scene: _Scene) -> np.ndarray:
    """Lambertian face colours: faces turned to the sun are bright, others get ambient."""
    lambert = np.clip(mesh.normals @ scene.sun, 0.0, 1.0)
    return mesh.colours * (scene.ambient + (1.0 - scene.ambient) * lambert)[:, None]


def _shadow(mesh: Mesh, sun: np.ndarray) -> np.ndarray:
    """The object's vertices pushed along the sun's rays down to the ground."""
    v = mesh.vertices
    return v - (v[:, 2] / sun[2])[:, None] * sun[None]


def _draw_mesh(
    canvas: np.ndarray,
    mesh: Mesh,
    pixels: np.ndarray,
    colours: np.ndarray,
    cam: Camera,
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
    points = subpixel(pixels)[mesh.quads[faces]]  # (faces, 4, 2)
    for pts, f in zip(points, faces, strict=True):
        cv2.fillConvexPoly(canvas, pts, colours[f].tolist(), cv2.LINE_AA, 4)
        if mask is not None:
            cv2.fillConvexPoly(mask, pts, mask_value, cv2.LINE_8, 4)


def _target_box(cam: Camera, target: Mesh) -> tuple[np.ndarray, np.ndarray] | None:
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
    if size[1] < MIN_BOX_HEIGHT_PX or size[0] < MIN_BOX_WIDTH_PX:
        return None
    return lo, hi


def _in_crop(cam: Camera, others: list[Mesh], x0: int, y0: int, x1: int, y1: int) -> list[Mesh]:
    """The objects whose bounding boxes reach into the crop (a cheap, conservative test)."""
    if not others:
        return []
    p, d = cam.project(np.concatenate([o.box for o in others]))
    p, d = p.reshape(-1, 8, 2), d.reshape(-1, 8)
    reach = (d.min(1) > 0.5) & (p.min(1) < [x1, y1]).all(1) & (p.max(1) > [x0, y0]).all(1)
    return [o for o, keep in zip(others, reach, strict=True) if keep]


def render_view(cam: Camera, scene: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """The 3x32x32 crop of the target as this camera sees it, or None when it does not.

    None when the target's centre is out of frame, its box is only a few pixels, or less
    than ``MIN_VISIBLE_FRACTION`` of its silhouette is unoccluded.
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
    # MAX_CANVAS pixels: the final 32x32 cannot show more.
    scale = min(1.0, MAX_CANVAS / max(crop_w, crop_h))
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
        cv2.fillConvexPoly(shadow, subpixel(hull), 1, cv2.LINE_8, 4)
    darker = (canvas * SHADOW_FACTOR).astype(np.uint8)
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
    if silhouette == 0 or cv2.countNonZero(mask) < MIN_VISIBLE_FRACTION * silhouette:
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
