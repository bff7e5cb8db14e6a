"""Synthetic multi-view multi-camera (MVMC-like) data set, rendered with OpenCV.

The paper's MVMC data set cannot be downloaded here, so this module renders a stand-in with
the same format and, more importantly, the same reasons for being hard: one object (car, bus
or person) per sample, seen by fixed cameras of unequal placement, each image the object's
bounding box cropped and resized to 32x32, and the object absent from some cameras. The
parts: ``settings``, ``geometry``, ``objects``, ``cameras`` and ``render``. Output follows
the original ``MVMC.npz``: ``X`` float32 ``(N, cameras, 3, 32, 32)`` with RGB pixel values
0..255, ``y`` int32 ``(N, cameras)`` with 0 car, 1 bus, 2 person, 3 absent.

Design: docs/design/synthetic-data.md (why it is hard, the scene model, generation speed).
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
