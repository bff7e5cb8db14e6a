"""The synthetic set's knobs: classes, image size, the generator's version, the scene's
scales and the six cameras (ddnn.data.synth says what they make hard)."""

from __future__ import annotations

from dataclasses import dataclass

from ddnn.data.multiview import MVMC_CLASSES

CLASSES: tuple[str, ...] = tuple(MVMC_CLASSES)
ABSENT: int = len(MVMC_CLASSES)
IMAGE_SIZE: int = 32
# Bumped whenever the images a seed gives change, so that caches keyed by it go stale.
VERSION: int = 2

# How often each class is the target. MVMC is imbalanced (paper Fig. 6); mildly so here.
CLASS_PROBS: tuple[float, ...] = (0.40, 0.25, 0.35)

# The world (cameras, backdrops, props) is the same for every seed; see the module docstring.
WORLD_SEED = 20170605
# Targets stand inside this disk around the plaza's centre.
PLAZA_RADIUS_M = 14.0
# Moving distractors stand inside this larger disk.
DISTRACTOR_RADIUS_M = 22.0
# Largest side of the canvas a crop is rendered on before the final resize to 32x32.
MAX_CANVAS = 64
# A camera sees the target only if at least this share of its silhouette is unoccluded ...
MIN_VISIBLE_FRACTION = 0.3
# ... and its bounding box is at least this many frame pixels tall and wide.
MIN_BOX_HEIGHT_PX = 6.0
MIN_BOX_WIDTH_PX = 3.0
# Shadows darken the ground by this factor.
SHADOW_FACTOR = 0.6


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
