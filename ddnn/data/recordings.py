"""Your own recordings in the MVMC format (`ddnn data import`): synchronized cameras, as
per-camera image folders (`DIR/cam<i>/<sample id>.png`) or videos (`DIR/cam<i>.mkv`, frame
index = sample id), and a CSV of labels (`sample,label[,cam0,cam1,...]`), read into `X`
(N, V, C, H, W) and `y` (N, V) in the labels file's row order.

A recording is put together by hand, so every inconsistency is a `DataError` naming the file
and, where a row is to blame, its line in the labels file: a silent guess (a dropped row, a
frame of another size) would only show later as a worse model. Frames that no row labels are
skipped, and counted for the summary.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import cv2
import numpy as np

from ddnn.core.errors import DataError
from ddnn.core.files import reason
from ddnn.data.multiview import MVMC_CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ABSENT = len(MVMC_CLASSES)
_CAMERA = re.compile(r"cam(\d+)")
_REQUIRED = ("sample", "label")

Frame = tuple[np.ndarray, str]  # pixels (H, W) grey or (H, W, 3) RGB, uint8; where from
Source = tuple[str, Callable[[], np.ndarray]]  # where a frame is, and how to read it


@dataclass(frozen=True)
class LabelRow:
    line: int  # in the labels file, the header being line 1
    sample: int  # the frame's file name in each camera folder, or its index in the videos
    label: int  # index into MVMC_CLASSES
    seen: dict[int, bool]  # camera -> its cam<i> column, for the cameras that have one


@dataclass(frozen=True)
class Labels:
    path: Path
    rows: list[LabelRow]
    cameras: list[int]  # the cameras that have a cam<i> column

    def at(self, row: LabelRow) -> str:
        return f"{self.path} line {row.line}"


@dataclass
class Recording:
    x: np.ndarray  # (N, V, C, H, W) float32, 0..255, zeros where absent
    y: np.ndarray  # (N, V) int32, ABSENT where the camera does not see the object
    unlabelled: int  # frames that no row of the labels file names: skipped
    marked_absent: int  # frames of views a row marks unseen (cam<i> = 0): stored as zeros


def read_labels(path: Path) -> Labels:
    """The rows of a labels file: a header naming `sample`, `label` and optionally `cam<i>`
    columns (other columns are ignored), then one row per sample."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [name.strip() for name in next(reader, [])]
                cameras = _columns(path, header)
                rows = [
                    _label_row(path, reader.line_num, header, fields, cameras)
                    for fields in reader
                    if any(field.strip() for field in fields)
                ]
            except csv.Error as e:
                raise DataError(f"{path} line {reader.line_num}: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read the labels file {path}: {reason(e)}") from None
    except UnicodeDecodeError:
        raise DataError(f"the labels file {path} is not UTF-8 text") from None
    if not rows:
        raise DataError(f"the labels file {path} names no samples")
    first: dict[int, int] = {}
    for row in rows:
        if row.sample in first:
            raise DataError(
                f"{path} line {row.line}: sample {row.sample} repeats line {first[row.sample]}"
            )
        first[row.sample] = row.line
    return Labels(path, rows, sorted(cameras.values()))


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """The header's cam<i> columns (name -> camera), once it is known to name the required
    columns, each once."""
    if not any(header):
        raise DataError(f"the labels file {path} is empty: it needs the header sample,label")
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise DataError(
            f"{path} line 1: missing column(s) {', '.join(missing)}; the header names "
            f"{', '.join(header)} (it needs sample,label and optionally cam0,cam1,...)"
        )
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"{path} line 1: column(s) {', '.join(twice)} appear more than once")
    cameras = {name: int(m[1]) for name in header if (m := _CAMERA.fullmatch(name))}
    if len(set(cameras.values())) < len(cameras):
        raise DataError(f"{path} line 1: two columns name the same camera ({', '.join(cameras)})")
    return cameras


def _label_row(
    path: Path, line: int, header: list[str], fields: list[str], cameras: dict[str, int]
) -> LabelRow:
    where = f"{path} line {line}"
    if len(fields) != len(header):
        raise DataError(f"{where}: {len(fields)} fields, but the header names {len(header)}")
    values = {name: field.strip() for name, field in zip(header, fields, strict=True)}
    sample, label = values["sample"], values["label"]
    if not (sample.isascii() and sample.isdigit()):
        raise DataError(f"{where}: sample id {sample!r} is not a non-negative integer")
    if label not in MVMC_CLASSES:
        raise DataError(
            f"{where}: unknown label {label!r}; the labels are {', '.join(MVMC_CLASSES)}"
        )
    seen = {}
    for name, camera in cameras.items():
        if values[name] not in ("0", "1"):
            raise DataError(
                f"{where}: {name} must be 1 (seen) or 0 (not seen), got {values[name]!r}"
            )
        seen[camera] = values[name] == "1"
    return LabelRow(line, int(sample), MVMC_CLASSES.index(label), seen)


def import_images(
    root: Path,
    labels: Labels,
    size: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Recording:
    """The samples of `labels` from the camera folders `root/cam0`, `root/cam1`, ..., each
    frame read from `<sample id>.<png|jpg|jpeg|bmp>`: a camera without that file misses the
    sample. `size` (height, width) resizes every frame; without it they must all be of one
    size. `progress` is called with the number of samples done so far."""
    folders = _cameras(root, folders=True)
    files = [_frame_files(folder) for folder in folders]
    views = _Views(labels, folders, size)
    for k, row in enumerate(labels.rows):
        sources = [_image_source(f[row.sample]) if row.sample in f else None for f in files]
        if all(source is None for source in sources):
            raise DataError(
                f"{labels.at(row)}: sample {row.sample} names no frame in any camera "
                f"({root}/cam<i>/{row.sample}.png, .jpg, .jpeg or .bmp)"
            )
        views.add(k, sources)
        if progress is not None:
            progress(k + 1)
    labelled = {row.sample for row in labels.rows}
    views.unlabelled = sum(len(f.keys() - labelled) for f in files)
    return views.recording()


def import_videos(
    root: Path,
    labels: Labels,
    size: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Recording:
    """The samples of `labels` from the videos `root/cam0.<ext>`, `root/cam1.<ext>`, ... (any
    format OpenCV reads), frame index = sample id. The cameras are synchronized, so every
    video must have as many frames as the others. `size` and `progress` as for
    `import_images`."""
    files = _cameras(root, folders=False)
    views = _Views(labels, files, size)
    wanted = {row.sample: k for k, row in enumerate(labels.rows)}
    counts = [0] * len(files)
    done = 0
    for index, frames in enumerate(zip_longest(*map(_video_frames, files))):
        for camera, frame in enumerate(frames):
            counts[camera] += frame is not None
        k = wanted.get(index)
        if k is None or any(frame is None for frame in frames):  # disagreeing: an error below
            views.unlabelled += sum(frame is not None for frame in frames)
            continue
        views.add(k, [(f"{files[c]} frame {index}", _held(f)) for c, f in enumerate(frames)])
        done += 1
        if progress is not None:
            progress(done)
    for camera, count in enumerate(counts):
        if count != counts[0]:
            raise DataError(
                f"the cameras' videos disagree in length: {files[0]} has {counts[0]} frames, "
                f"{files[camera]} has {count}"
            )
    for row in labels.rows:
        if row.sample >= counts[0]:
            raise DataError(
                f"{labels.at(row)}: sample {row.sample} names no frame: the videos have "
                f"{counts[0]} frames (0..{counts[0] - 1})"
            )
    return views.recording()


class _Views:
    """Each labelled row's views as they are read, with the counts the summary reports; one
    row's rules (cam<i> columns, missing frames) for images and videos alike."""

    def __init__(self, labels: Labels, cameras: list[Path], size: tuple[int, int] | None):
        beyond = [c for c in labels.cameras if c >= len(cameras)]
        if beyond:
            raise DataError(
                f"{labels.path} line 1: column cam{beyond[0]} names a camera that is not there "
                f"(cameras: {', '.join(p.name for p in cameras)})"
            )
        self.labels, self.cameras, self.size = labels, cameras, size
        self.rows: list[list[Frame | None]] = [[] for _ in labels.rows]
        self.unlabelled = 0
        self.marked_absent = 0

    def add(self, k: int, sources: list[Source | None]) -> None:
        """Row `k`'s views from one source per camera (None where the camera has no frame):
        a view is present where its cam<i> column says 1, or, without one, where there is a
        frame."""
        row = self.labels.rows[k]
        for camera, source in enumerate(sources):
            seen = row.seen.get(camera, source is not None)
            if seen and source is None:
                raise DataError(
                    f"{self.labels.at(row)}: cam{camera} is 1, but {self.cameras[camera]} has "
                    f"no frame of sample {row.sample}"
                )
            self.marked_absent += source is not None and not seen
            self.rows[k].append(self._frame(source, row) if seen and source else None)
        if all(frame is None for frame in self.rows[k]):
            raise DataError(
                f"{self.labels.at(row)}: sample {row.sample} is seen by no camera (its frames' "
                "cam<i> columns are all 0): a sample needs at least one view"
            )

    def _frame(self, source: Source, row: LabelRow) -> Frame:
        where, read = source
        where = f"{where} ({self.labels.at(row)})"
        try:
            pixels = read()
        except DataError as e:
            raise DataError(f"{e} ({self.labels.at(row)})") from None
        if self.size is not None and pixels.shape[:2] != self.size:
            height, width = self.size
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
        return pixels, where

    def recording(self) -> Recording:
        """The views as MVMC arrays: colour (C = 3) unless every frame is grey (C = 1)."""
        frames = [frame for row in self.rows for frame in row if frame is not None]
        first, first_at = frames[0]
        shape = first.shape[:2]
        for pixels, where in frames:
            if pixels.shape[:2] != shape:
                raise DataError(
                    f"{where} is {_hxw(pixels.shape)} (HxW), but {first_at} is {_hxw(shape)}: "
                    "frames must all be of one size (give --size HxW to resize them)"
                )
        channels = 3 if any(pixels.ndim == 3 for pixels, _ in frames) else 1
        n, v = len(self.rows), len(self.cameras)
        x = np.zeros((n, v, channels, *shape), np.float32)
        y = np.full((n, v), ABSENT, np.int32)
        for k, (row, views) in enumerate(zip(self.labels.rows, self.rows, strict=True)):
            for camera, frame in enumerate(views):
                if frame is not None:
                    pixels = frame[0] if frame[0].ndim == 3 else frame[0][..., None]
                    x[k, camera] = pixels.transpose(2, 0, 1)  # a grey frame fills C = 3 too
                    y[k, camera] = row.label
        return Recording(x, y, self.unlabelled, self.marked_absent)


def _hxw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _cameras(root: Path, folders: bool) -> list[Path]:
    """The `cam<i>` folders (or, `folders` False, video files `cam<i>.<ext>`) of `root`, in
    camera order: numbered from 0, without gaps, one per camera."""
    kind = "folder" if folders else "video"
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"the {'image' if folders else 'video'} folder {root} {problem}")
    found: dict[int, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        match = _CAMERA.fullmatch(entry.name if folders else entry.stem)
        if match and entry.is_dir() == folders:
            found.setdefault(int(match[1]), []).append(entry)
    what = "camera folders cam0, cam1, ..." if folders else "videos cam0.<ext>, cam1.<ext>, ..."
    if not found:
        raise DataError(f"{root} holds no {what}")
    gaps = sorted(set(range(max(found) + 1)) - found.keys())
    if gaps:
        present = ", ".join(found[c][0].name for c in sorted(found))
        raise DataError(
            f"{root} has {present} but no cam{gaps[0]}: cameras are numbered from 0 without gaps"
        )
    for paths in found.values():
        if len(paths) > 1:
            raise DataError(f"two {kind}s for one camera: {paths[0]} and {paths[1]}")
    return [found[c][0] for c in range(len(found))]


def _frame_files(folder: Path) -> dict[int, Path]:
    """Sample id -> image file of one camera folder (hidden files aside, every file must be
    an image named by its sample id)."""
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem, suffix = path.stem, path.suffix.lower()
        if not (path.is_file() and suffix in IMAGE_SUFFIXES and stem.isascii() and stem.isdigit()):
            raise DataError(
                f"{path}: not an image named by its sample id (17.png, 17.jpg, 17.jpeg, 17.bmp)"
            )
        sample = int(stem)
        if sample in files:
            raise DataError(f"two frames of sample {sample}: {files[sample]} and {path}")
        files[sample] = path
    return files


def _image_source(path: Path) -> Source:
    return str(path), lambda: _read_image(path)


def _held(pixels: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: pixels


def _read_image(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {reason(e)}") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"{path} is not a readable image")
    if image.dtype != np.uint8:
        raise DataError(f"{path} has {image.dtype} pixels: only 8-bit images are read (0..255)")
    return _rgb(image)


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    # FFmpeg's own lines about a broken file would only repeat our one-line error
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path} is not a readable video")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield _rgb(frame)
    finally:
        capture.release()


def _rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or BGRA, whose alpha is dropped) as RGB; grey stays (H, W)."""
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
