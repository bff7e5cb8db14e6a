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

Only the crop around the target is rendered (at most ``settings.MAX_CANVAS`` pixels on a
side), which keeps generation fast: about 7 s for 2000 samples on one core.

The parts: ``settings`` (classes, scales, cameras), ``geometry`` (boxes as meshes),
``objects`` (cars, buses, persons, props), ``cameras`` (poses, projection, backdrops) and
``render`` (the world, a scene, a camera's view of it).

Output follows the original ``MVMC.npz``: ``X`` float32 ``(N, cameras, 3, 32, 32)`` with RGB
pixel values 0..255, ``y`` int32 ``(N, cameras)`` with 0 car, 1 bus, 2 person, 3 absent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ddnn.data.synth.render import build_world, draw_scene, render_view
from ddnn.data.synth.settings import ABSENT, CLASSES, IMAGE_SIZE, VERSION

__all__ = ["ABSENT", "CLASSES", "IMAGE_SIZE", "VERSION", "synthesize"]


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
    world = build_world(n_cameras)
    rng = np.random.default_rng(seed)
    X = np.zeros((n_samples, n_cameras, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    y = np.full((n_samples, n_cameras), ABSENT, np.int32)
    for i in range(n_samples):
        while True:
            scene = draw_scene(rng, world)
            views = [render_view(cam, scene, rng) for cam in world.cameras]
            if any(v is not None for v in views):
                break
        for c, view in enumerate(views):
            if view is not None:
                X[i, c] = view
                y[i, c] = scene.target.label
        if progress is not None:
            progress(i + 1)
    return X, y
