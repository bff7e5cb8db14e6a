"""Multi-view data sets: `MultiViewData`, the paper's MVMC file format, tiled images, and the
train / validation / test split.

One sample is V views (one per device) of one object:
- the MVMC format: `X` float32 (N, 6, 3, 32, 32), pixels 0-255, all-zero where the object is
  absent; `y` int (N, 6), 3 = absent (the synthetic set is written in it too);
- tiled images: an `.npz` with `X` (N, H, W[, C]) and `y` (N,), each image cut into a grid.
Pixels stay in 0..255: the first binary layer's signed sums are then exact in float32.
Data SPECs (`synth`, `mvmc:PATH`, `tiles:PATH`) are read by ddnn/data/specs.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.core.config import ModelConfig, TrainConfig
from ddnn.core.errors import DataError
from ddnn.core.files import read_npz, replaced
from ddnn.core.payloads import camera_frames

MVMC_CLASSES = ["car", "bus", "person"]


@dataclass
class MultiViewData:
    x: np.ndarray  # (N, V, C, H, W) float32, 0..255
    view_labels: np.ndarray  # (N, V) int32: class per view, len(classes) where absent
    labels: np.ndarray  # (N,) int64: the sample's class
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_views(self) -> int:
        return self.x.shape[1]

    @property
    def view_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[2:]
        return int(c), int(h), int(w)

    def model_settings(self) -> dict[str, Any]:
        """The `model` settings this data decides: its classes, one device per view, and the
        view shape (every config is fitted to its data with them)."""
        return {
            "classes": list(self.classes),
            "n_devices": self.n_views,
            "input_shape": self.view_shape,
        }

    def seen_alone(self) -> list[float]:
        """Per view, the % of samples that no other view sees (by the view labels): without
        that device those samples are guesses, whatever the model, so its absence costs at
        least part of that share."""
        seen = self.view_labels < len(self.classes)
        alone = seen & (seen.sum(axis=1, keepdims=True) == 1)
        return [round(100.0 * float(a), 2) for a in alone.mean(axis=0)]

    def subset(self, index: np.ndarray) -> MultiViewData:
        return MultiViewData(
            self.x[index], self.view_labels[index], self.labels[index], self.classes, self.name
        )

    def as_camera_frames(self) -> MultiViewData:
        """The same samples as a camera gives them (uint8 `camera_frames`), still float32: what a
        device on uint8 frames (a C device, a microcontroller) sees, and so what the offline
        decisions it is compared with must see."""
        x = camera_frames(self.x).astype(np.float32)
        return MultiViewData(x, self.view_labels, self.labels, self.classes, self.name)

    def split(self, seed: int = 0, fraction: float = 0.8) -> tuple[MultiViewData, MultiViewData]:
        """A reproducible random split: `fraction` of the samples first (the paper's 80/20
        train/test split with the defaults), the rest second."""
        first, second = split_rows(len(self), seed, fraction)
        return self.subset(first), self.subset(second)


def mixed(new: MultiViewData, old: MultiViewData, old_share: float, seed: int) -> MultiViewData:
    """`new` and a random part of `old` that makes up `old_share` of the result (all of
    `old` where it has too few): continued training on new data without forgetting the
    old. Both must have the same views and classes."""
    if (new.n_views, new.view_shape, new.classes) != (old.n_views, old.view_shape, old.classes):
        raise DataError(f"{old.name} and {new.name} differ in views, view shape or classes")
    wanted = len(new) * old_share / (1 - old_share) if old_share < 1 else len(old)
    rows = np.sort(np.random.default_rng(seed).permutation(len(old))[: int(round(wanted))])
    part = old.subset(rows)
    return MultiViewData(
        np.concatenate([new.x, part.x]),
        np.concatenate([new.view_labels, part.view_labels]),
        np.concatenate([new.labels, part.labels]),
        new.classes,
        f"{new.name} + {len(part)} of {old.name}",
    )


def split_rows(n: int, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `MultiViewData.split`: `fraction` of 0..n-1 at random, and the rest."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(fraction * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


def sample_labels(view_labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample's label is the class that the cameras seeing the object agree on (the
    most frequent non-absent view label). Returns (labels, keep) where `keep` is False for
    samples that no camera sees: those carry no label and are left out, and counted."""
    counts = np.stack([(view_labels == c).sum(axis=1) for c in range(n_classes)], axis=1)
    return counts.argmax(axis=1).astype(np.int64), counts.sum(axis=1) > 0


def from_mvmc_arrays(x: np.ndarray, y: np.ndarray, name: str) -> MultiViewData:
    """Validate MVMC-format arrays and wrap them. Raises DataError naming the problem."""
    n_classes = len(MVMC_CLASSES)
    if x.ndim != 5 or x.shape[2] not in (1, 3):
        raise DataError(f"{name}: X must be (N, views, 1|3, H, W), got shape {x.shape}")
    if y.shape != x.shape[:2]:
        raise DataError(f"{name}: y must be (N, views) = {x.shape[:2]}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: y must hold integers, got {y.dtype}")
    check_pixels(x, name)
    if y.min(initial=0) < 0 or y.max(initial=0) > n_classes:
        raise DataError(f"{name}: y values must lie in 0..{n_classes} ({n_classes} = absent)")
    labels, keep = sample_labels(y, n_classes)
    data = MultiViewData(
        x.astype(np.float32, copy=False), y.astype(np.int32), labels, list(MVMC_CLASSES), name
    )
    if not keep.all():
        data = data.subset(np.flatnonzero(keep))
        data.name = f"{name} ({int((~keep).sum())} samples seen by no camera left out)"
    if len(data) == 0:
        raise DataError(f"{name}: no usable samples")
    return data


def check_trainable(data: MultiViewData) -> None:
    """Refuse to train on samples of one class: the model would answer that class for
    everything, with full confidence, and look perfect on its own data. (Evaluating or
    replaying such a set is fine.)"""
    present = np.unique(data.labels)
    if len(present) < 2:
        only = data.classes[int(present[0])] if len(present) else "none"
        raise DataError(
            f"{data.name}: every training sample is of class {only}: "
            "a classifier needs at least two"
        )


def check_pixels(x: np.ndarray, name: str) -> None:
    """Refuse images that are not numbers, or hold NaN or infinities: the binary first layer
    would turn them into signs that no camera could produce, silently."""
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{name}: X must be numeric, got {x.dtype}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        raise DataError(f"{name}: X holds NaN or infinite values (first in sample {bad[0]})")


def load_mvmc(path: Path | str) -> MultiViewData:
    path = Path(path)
    arrays = read_npz(path, ("X", "y"), DataError, "data file")
    return from_mvmc_arrays(arrays["X"], arrays["y"], name=f"mvmc:{path}")


def save_mvmc(path: Path | str, x: np.ndarray, y: np.ndarray, compressed: bool = True) -> None:
    """Write arrays in the MVMC format (atomically, so a killed run leaves no half file);
    `compressed=False` for a file read far more often than it is moved (a cache)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    with replaced(path, ".tmp.npz") as tmp:
        save(tmp, X=x.astype(np.float32), y=y.astype(np.int32))


def cut_tiles(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, H, W[, C]) -> (N, rows*cols, C, H//rows, W//cols): one tile per view, row-major.
    Pixels beyond a whole number of tiles are dropped."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"tiled images must be (N, H, W) or (N, H, W, C), got {images.shape}")
    rows, cols = grid
    n, h, w, c = images.shape
    th, tw = h // rows, w // cols
    if th < 1 or tw < 1:
        raise DataError(f"a {rows}x{cols} grid does not fit images of {h}x{w}")
    tiles = images[:, : th * rows, : tw * cols].reshape(n, rows, th, cols, tw, c)
    return tiles.transpose(0, 1, 3, 5, 2, 4).reshape(n, rows * cols, c, th, tw)


def load_tiles(path: Path | str, grid: tuple[int, int] = (2, 3)) -> MultiViewData:
    path = Path(path)
    name = f"tiles:{path}"
    arrays = read_npz(path, ("X", "y"), DataError, "data file")
    x, y = arrays["X"], arrays["y"]
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name}: y must be (N,) with N = {len(x)}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0:
        raise DataError(f"{name}: y must hold non-negative integer class ids")
    n_classes = int(y.max(initial=0)) + 1
    if n_classes < 2:
        raise DataError(f"{name}: y holds class 0 only: a classifier needs at least two")
    check_pixels(x, name)
    x = cut_tiles(np.asarray(x, dtype=np.float32), grid)
    if x.max(initial=0) <= 1.0:
        x = x * 255.0  # images stored as 0..1 floats: bring to the 0..255 convention
    views = np.repeat(y[:, None], x.shape[1], axis=1).astype(np.int32)
    classes = [str(c) for c in range(n_classes)]
    return MultiViewData(x, views, y.astype(np.int64), classes, name)


def check_fits(data: MultiViewData, model: ModelConfig) -> None:
    """Raise DataError unless `data` has one view per device of `model`, of the model's input
    shape, and the model's classes: otherwise decisions would be scored against labels of
    other classes, or the slices would not even run on the views."""
    if (data.n_views, data.view_shape, list(data.classes)) != (
        model.n_devices,
        tuple(model.input_shape),
        list(model.classes),
    ):
        raise DataError(
            f"data {data.name} ({data.n_views} views of {data.view_shape}, classes "
            f"{data.classes}) does not fit the model ({model.n_devices} devices of "
            f"{tuple(model.input_shape)}, classes {model.classes})"
        )


@dataclass
class Splits:
    train: MultiViewData
    validation: MultiViewData | None  # held out of training, for picking thresholds
    test: MultiViewData


def part_rows(n: int, cfg: TrainConfig) -> dict[str, np.ndarray | None]:
    """The rows of each part ("train", "validation": None when none is held out, "test") of
    a set of `n` samples, reproducible from the config's seeds."""
    train, test = split_rows(n, cfg.split_seed, 1 - cfg.test_fraction)
    validation = None
    if cfg.validation_fraction > 0:
        kept, held = split_rows(len(train), cfg.split_seed + 1, 1 - cfg.validation_fraction)
        train, validation = train[kept], train[held]
    return {"train": train, "validation": validation, "test": test}


def replay_part(data: MultiViewData, part: str, cfg: TrainConfig) -> MultiViewData:
    """The part ("test", "validation", "train" or "all") of `data` that `ddnn train` and
    `ddnn eval` use for a model trained with `cfg`, on the rows `ddnn.data.split` picks."""
    if part == "all":
        return data
    if part not in ("test", "validation", "train"):
        raise DataError(f"unknown part {part!r}: use test, validation, train or all")
    rows = part_rows(len(data), cfg)[part]  # only this part is copied out of the set
    if rows is None:
        raise DataError(f"the training config holds out no {part} part of {data.name}")
    return data.subset(rows)


def split(data: MultiViewData, cfg: TrainConfig) -> Splits:
    """The train / validation / test parts of `data`, reproducible from the config's seeds,
    so that `ddnn eval` and `ddnn calibrate` find the same parts that `ddnn train` used."""
    rows = part_rows(len(data), cfg)
    validation = rows["validation"]
    return Splits(
        data.subset(rows["train"]),
        None if validation is None else data.subset(validation),
        data.subset(rows["test"]),
    )
