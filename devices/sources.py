"""Frame sources: where an end device's frames come from.

A device runs its slice on frames in the representation of `MultiViewData.x[n, v]`
(ddnn/data/multiview.py): float32 arrays (C, H, W) with pixels 0..255, RGB (or one grey
channel), each tagged with a sample id, the correlation id across devices: frames that
different devices tag with one id must show the same instant. `open_source(SPEC, device,
input_shape)` opens a data-set replay (`synth`, `mvmc:PATH`, `tiles:PATH`), a raw frame file
(`frames:PATH`: uint8 frames as a C device reads them, devices/c_device.py), a camera, a stream
URL, a video file or an image folder; `{device}` in a SPEC is replaced by the device number.
Live cameras and streams have no shared sample ids: tag `read()`'s frame with a shared clock's.
Errors a user can cause raise `ddnn.core.errors.DataError`. Needs NumPy and OpenCV, not PyTorch.

Design: docs/design/devices.md (each source, its sample ids, the frame conversion).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from ddnn.core.config import ModelConfig, TrainConfig
from ddnn.core.errors import DataError
from ddnn.core.manifest import Manifest
from ddnn.data import MultiViewData, check_fits, load_spec, replay_part, trained_on

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
REPLAY_SCHEMES = ("synth", "mvmc", "tiles")
STREAM_TIMEOUT_S = 10.0  # opening a stream URL, and each read from it

Shape = tuple[int, int, int]


@dataclass
class Frame:
    sample: int  # sample (frame) id: the correlation id across devices
    image: np.ndarray  # (C, H, W) float32, 0..255, RGB


@runtime_checkable
class FrameSource(Protocol):
    """What every source offers. `length` is the number of sample ids (0..length-1) of a
    finite source, None for an unbounded one, where `len()` raises TypeError."""

    name: str
    length: int | None

    def frame(self, sample: int) -> Frame | None:
        """The frame with this sample id; None when the source has none for it (past the
        end, or an unreadable image)."""
        ...

    def __iter__(self) -> Iterator[Frame]: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class _Source:
    """Shared plumbing: `len()`, and use as a context manager."""

    name: str
    length: int | None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"{self.name} is an unbounded source: it has no length")
        return self.length

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class _EveryFrame(_Source):
    """A source that holds every frame, 0 .. length - 1: iterating yields them all."""

    length: int

    def frame(self, sample: int) -> Frame | None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        for sample in range(self.length):
            frame = self.frame(sample)
            assert frame is not None
            yield frame


def check_input_shape(input_shape: tuple[int, ...]) -> Shape:
    """The model's input shape as (C, H, W) ints, C being 1 (grey) or 3 (RGB)."""
    try:
        c, h, w = (int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise DataError(f"input shape must be (C, H, W), got {input_shape!r}") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise DataError(f"input shape must be (1 or 3, H, W) with H, W >= 1, got {(c, h, w)}")
    return c, h, w


# OpenCV colour conversions by (image channels, model channels).
_CONVERSIONS = {
    (1, 3): cv2.COLOR_GRAY2RGB,
    (3, 3): cv2.COLOR_BGR2RGB,
    (4, 3): cv2.COLOR_BGRA2RGB,
    (3, 1): cv2.COLOR_BGR2GRAY,
    (4, 1): cv2.COLOR_BGRA2GRAY,
}


def to_model_input(image: np.ndarray, input_shape: Shape) -> np.ndarray:
    """An OpenCV image, (H, W) grey, (H, W, 3) BGR or (H, W, 4) BGRA, as the model takes it:
    (C, H, W) float32 with pixels 0..255, RGB (or grey when C = 1), resized with INTER_AREA."""
    c, h, w = input_shape
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim == 3 and channels == 1:
        image = image[:, :, 0]
    elif (channels, c) in _CONVERSIONS:
        image = cv2.cvtColor(image, _CONVERSIONS[channels, c])
    elif channels != 1 or c != 1:
        raise DataError(f"cannot convert an image of shape {image.shape} to {c} channel(s)")
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    if image.ndim == 2:
        image = image[:, :, None]
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


# --- data-set replay ----------------------------------------------------------------------


class ReplaySource(_EveryFrame):
    """View `device` of every sample of a `MultiViewData` (one part of a set): sample id =
    row. Random access; `views` (N, C, H, W) is all it keeps of the set (a device replaying
    a 150 MB set holds its own 1/6 of the part it replays, not the set)."""

    def __init__(
        self,
        data: MultiViewData,
        device: int,
        input_shape: tuple[int, ...] | None = None,
        name: str | None = None,
    ):
        if not 0 <= device < data.n_views:
            raise DataError(
                f"device {device} is outside the {data.n_views} views of {data.name} "
                f"(devices 0..{data.n_views - 1})"
            )
        if input_shape is not None and tuple(int(d) for d in input_shape) != data.view_shape:
            raise DataError(
                f"{data.name} has views of shape {data.view_shape} but the model takes "
                f"{tuple(input_shape)}"
            )
        self.views = np.array(data.x[:, device], dtype=np.float32)
        self.device = device
        self.name = name or f"{data.name} view {device}"
        self.length = len(data)

    def frame(self, sample: int) -> Frame | None:
        if not 0 <= sample < self.length:
            return None
        return Frame(sample, self.views[sample].copy())


# --- raw frame files ------------------------------------------------------------------------


class RawFrameSource(_EveryFrame):
    """A raw frame file: N frames of C*H*W uint8 each, (C, H, W) row-major, nothing else (what
    `ddnn device-frames` writes, and a C device replays). Sample id = frame number; random
    access. A file whose size is not a whole number of frames is refused, by name."""

    def __init__(self, path: Path | str, input_shape: tuple[int, ...]):
        path = Path(path)
        shape = check_input_shape(input_shape)
        frame = int(np.prod(shape))
        try:
            size = path.stat().st_size
        except OSError as e:
            raise DataError(f"frame file {path} cannot be read: {e.strerror or e}") from None
        if size == 0 or size % frame:
            raise DataError(
                f"frame file {path} holds {size} bytes: not a whole number of frames of {frame} "
                f"bytes (uint8 (C, H, W) = {shape})"
            )
        self.frames = np.fromfile(path, dtype=np.uint8).reshape(-1, *shape)
        self.name = f"frames:{path}"
        self.length = len(self.frames)

    def frame(self, sample: int) -> Frame | None:
        if not 0 <= sample < self.length:
            return None
        return Frame(sample, self.frames[sample].astype(np.float32))


# --- OpenCV: cameras, streams, video files ------------------------------------------------


def _redact(url: str) -> str:
    """A stream URL fit for logs: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class VideoSource(_Source):
    """Frames from `cv2.VideoCapture`: a camera index, a stream URL or a video file.

    `read()` returns the next image (None at the end of a file, or when a camera or stream
    gives no frame). Iterating yields Frames numbered by a frame counter: from 0 for a file
    (restarting from the beginning), onward from the current count for a live source.
    `frame(k)` works for files only (reading forward, or reopening the file to go back);
    a live source raises DataError: tag `read()` images with a shared clock's sample ids.
    """

    def __init__(
        self,
        target: int | str,
        input_shape: tuple[int, ...],
        *,
        live: bool,
    ):
        self.target = target
        self.input_shape = check_input_shape(input_shape)
        self.live = live
        self.name = f"camera:{target}" if isinstance(target, int) else _redact(target)
        self.length = None  # a file's frame count from its container is only an estimate
        self.position = 0  # sample id of the next frame read() returns
        self._last: Frame | None = None
        self._cap = self._open()

    def _open(self) -> cv2.VideoCapture:
        if isinstance(self.target, str) and "://" in self.target:
            ms = int(STREAM_TIMEOUT_S * 1000)  # a dead host must not hang the device
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, timeouts)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            what = "camera" if isinstance(self.target, int) else "stream or video"
            raise DataError(f"{what} {self.name} could not be opened")
        if isinstance(self.target, int):
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ignored where the backend cannot
        return cap

    def _rewind(self) -> None:
        self._cap.release()
        self._cap = self._open()
        self.position = 0
        self._last = None

    def read(self) -> np.ndarray | None:
        """The next image as the model takes it, or None when there is none."""
        ok, image = self._cap.read()
        if not ok or image is None:
            return None
        self.position += 1
        return to_model_input(image, self.input_shape)

    def _next(self) -> Frame | None:
        sample = self.position
        image = self.read()
        self._last = None if image is None else Frame(sample, image)
        return self._last

    def frame(self, sample: int) -> Frame | None:
        if self.live:
            raise DataError(
                f"{self.name} is a live source with no random access: call read() and tag "
                "each image with a sample id from a clock shared by the devices"
            )
        if sample < 0:
            return None
        if self._last is not None and self._last.sample == sample:
            return self._last
        if sample < self.position:
            self._rewind()
        while self.position < sample:  # skip forward without decoding
            if not self._cap.grab():
                return None
            self.position += 1
        return self._next()

    def __iter__(self) -> Iterator[Frame]:
        if not self.live and self.position > 0:
            self._rewind()
        while (frame := self._next()) is not None:
            yield frame

    def close(self) -> None:
        self._cap.release()


# --- image folders ------------------------------------------------------------------------


def _natural_key(path: Path) -> list[int | str]:
    # re.split with a group alternates text (even places) and digits (odd places).
    parts = re.split(r"(\d+)", path.name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


class ImageFolderSource(_Source):
    """The image files of a folder in natural order; sample id = position in that order.
    An unreadable file is skipped (logged once): its id has no frame."""

    def __init__(self, folder: Path | str, input_shape: tuple[int, ...]):
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist")
        self.input_shape = check_input_shape(input_shape)
        self.paths = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=_natural_key,
        )
        if not self.paths:
            raise DataError(
                f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        self.name = f"images:{folder}"
        self.length = len(self.paths)
        self._unreadable: set[int] = set()

    def frame(self, sample: int) -> Frame | None:
        if not 0 <= sample < self.length or sample in self._unreadable:
            return None
        path = self.paths[sample]
        flag = cv2.IMREAD_GRAYSCALE if self.input_shape[0] == 1 else cv2.IMREAD_COLOR
        try:  # decode from bytes: cv2.imread cannot open some non-ASCII paths
            image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), flag)
            reason = "not a readable image"
        except (OSError, cv2.error) as e:
            image, reason = None, str(e)
        if image is None or image.size == 0:
            self._unreadable.add(sample)
            log.warning("%s: skipping %s (%s)", self.name, path.name, reason)
            return None
        return Frame(sample, to_model_input(image, self.input_shape))

    def __iter__(self) -> Iterator[Frame]:
        for sample in range(self.length):
            if (frame := self.frame(sample)) is not None:
                yield frame


# --- SPEC -> source -----------------------------------------------------------------------


def open_source(
    spec: str,
    device: int,
    input_shape: tuple[int, int, int],
    *,
    part: str = "test",
    grid: str = "2x3",
    train_config: TrainConfig | None = None,
    model: ModelConfig | None = None,
) -> ReplaySource | RawFrameSource | VideoSource | ImageFolderSource:
    """Open the frame source a SPEC names for device `device` (see the module docstring).

    `part`, `grid`, `train_config` (default `TrainConfig()`) and `model` (the set must fit
    it, when given) concern data-set replay only."""
    if device < 0:
        raise DataError(f"device number must be 0 or more, got {device}")
    spec = spec.strip().replace("{device}", str(device))
    scheme, sep, arg = spec.partition(":")

    if scheme in REPLAY_SCHEMES:
        whole = load_spec(spec, grid)
        if model is not None:
            check_fits(whole, model)
        data = replay_part(whole, part, train_config or TrainConfig())
        if len(data) == 0:
            raise DataError(f"the {part} part of {data.name} is empty")
        return ReplaySource(data, device, input_shape, name=f"{data.name} [{part}] view {device}")

    if scheme == "frames" and sep:
        return RawFrameSource(Path(arg).expanduser(), input_shape)
    if scheme == "camera" or spec.isdigit():
        index = arg if scheme == "camera" else spec
        if not index.strip().isdigit():
            raise DataError(f"camera must be camera:N with N a device index, got {spec!r}")
        return VideoSource(int(index), input_shape, live=True)
    if "://" in spec:
        return VideoSource(spec, input_shape, live=True)
    if scheme == "video" and sep:
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DataError(f"video file {path} does not exist")
        return VideoSource(str(path), input_shape, live=False)
    if scheme == "images" and sep:
        return ImageFolderSource(Path(arg).expanduser(), input_shape)

    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, input_shape)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            raise DataError(f"{path} is a data file: replay it as mvmc:{path} or tiles:{path}")
        return VideoSource(str(path), input_shape, live=False)
    raise DataError(
        f"frame source {spec!r}: no such file or folder, and not one of synth, mvmc:PATH, "
        "tiles:PATH, camera:N, a stream URL, a video file or an image folder"
    )


def open_device_source(
    manifest: Manifest, device: int, spec: str | None = None
) -> ReplaySource | RawFrameSource | VideoSource | ImageFolderSource:
    """The frames of device `device` of an export: `spec` (any SPEC above), by default a
    replay of the test part of the data the model was trained on, on the model's grid, cut
    as `ddnn train` and `ddnn eval` cut it (never silently another set)."""
    cfg = manifest.ddnn_config()
    own_data, grid = trained_on(manifest.meta)
    return open_source(
        spec or own_data,
        device,
        cfg.model.input_shape,
        grid=grid,
        train_config=cfg.train,
        model=cfg.model,
    )
