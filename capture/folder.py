"""The capture folder: hard samples in the recordings format of `ddnn data import`
(ddnn/data/recordings.py), `DIR/cam<i>/<sample>.png` and `DIR/labels.csv`, so that a person
corrects the labels (each row's first guess is the class the deployment decided) and imports
the folder as any recording; `build` makes `DIR/captured.npz` from it with that same import
code, so that the format has one reader and one writer.

Every byte it writes counts against a quota, checked before a sample is written: the folder
never grows past it. An `OSError` (a full disk) reaches the caller, which stops capturing.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ddnn.core.errors import DataError, DDNNError
from ddnn.core.files import make_folder, reason
from ddnn.data import save_mvmc
from ddnn.data.recordings import import_images, read_labels
from ddnn.live.wire import Decision

LABELS = "labels.csv"
BUILT = "captured.npz"
# What the deployment decided, after the columns `ddnn data import` reads (it ignores these).
DECISION_COLUMNS = ("exit", "entropy", "degraded", "abstained", "predicted")


class QuotaReached(Exception):
    """Writing the next sample would take the folder past its quota."""


class CaptureFolder:
    """A capture folder for `cameras` cameras, written up to `quota` bytes (None: no limit).
    A folder that already holds a capture of as many cameras is continued (a restarted
    service): its samples stay, are not written again, and count against the quota."""

    def __init__(self, root: Path, cameras: int, quota: int | None = None) -> None:
        self.root = make_folder(root, "capture folder")
        self.quota = quota
        self.cameras = cameras
        self.header = ["sample", "label", *(f"cam{i}" for i in range(cameras)), *DECISION_COLUMNS]
        self.labels = self.root / LABELS
        self.samples = self._earlier()
        for i in range(cameras):  # every camera's folder, so that the import finds them all
            make_folder(self.root / f"cam{i}", "camera folder")
        if not self.labels.exists():
            self._append(self._csv(self.header))
        self.bytes = sum(p.stat().st_size for p in self._files())

    def _earlier(self) -> set[int]:
        """The samples of an earlier capture into this folder (none for a new one)."""
        if not self.labels.exists():
            return set()
        try:
            with self.labels.open(newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            why = reason(e) if isinstance(e, OSError) else str(e)
            raise DDNNError(f"cannot read {self.labels}: {why}") from None
        if not rows or rows[0] != self.header:
            raise DDNNError(
                f"{self.labels} is not a capture of this deployment's {self.cameras} "
                "cameras: give `--out` a new folder"
            )
        return {int(row[0]) for row in rows[1:] if row and row[0].isdigit()}

    def _files(self) -> list[Path]:
        return [self.labels, *self.root.glob("cam*/*")]

    @staticmethod
    def _csv(fields: list[str]) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(fields)
        return text.getvalue().encode()

    def _append(self, row: bytes) -> None:
        with self.labels.open("ab") as f:  # flushed on close: each row whole, at once
            f.write(row)

    def write(self, decision: Decision, frames: dict[int, np.ndarray]) -> None:
        """Write one hard sample: the frames of the cameras that sent theirs (uint8 (C, H, W)
        by camera) as PNG, then its labels row. `QuotaReached` (nothing written) when they
        would take the folder past the quota; an `OSError` as the disk gives it."""
        pngs = {camera: _png(frame) for camera, frame in frames.items()}
        guess = "" if decision.abstained else decision.class_name or ""
        row = self._csv(
            [
                str(decision.sample),
                guess,  # the label to correct; an abstained sample has none yet
                *("1" if i in frames else "0" for i in range(self.cameras)),
                decision.exit or "",
                f"{decision.entropy or 0.0:.6f}",
                str(int(decision.degraded)),
                str(int(decision.abstained)),
                guess,
            ]
        )
        size = len(row) + sum(len(png) for png in pngs.values())
        if self.quota is not None and self.bytes + size > self.quota:
            raise QuotaReached(f"{self.bytes + size} bytes > {self.quota}")
        for camera, png in pngs.items():
            (self.root / f"cam{camera}" / f"{decision.sample}.png").write_bytes(png)
        self._append(row)
        self.bytes += size
        self.samples.add(decision.sample)


def _png(frame: np.ndarray) -> bytes:
    """A uint8 (C, H, W) RGB (or grey) frame as PNG bytes (lossless: read back the same)."""
    image = (
        frame[0]
        if frame.shape[0] == 1
        else cv2.cvtColor(frame.transpose(1, 2, 0), cv2.COLOR_RGB2BGR)
    )
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"OpenCV could not encode a frame of shape {frame.shape} as PNG")
    return png.tobytes()


def build(root: Path) -> int:
    """Write `root/captured.npz` (the MVMC format) from the capture folder with the import
    code of `ddnn data import`; returns its samples. Rows without a label yet (abstained
    samples) are left out until someone labels them; none labelled: no file."""
    try:
        with (root / LABELS).open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DataError(f"{root} holds no capture: cannot read {LABELS}: {reason(e)}") from None
    labelled = [rows[0]] + [row for row in rows[1:] if len(row) > 1 and row[1]]
    if len(labelled) == 1:
        return 0
    with tempfile.TemporaryDirectory(prefix="ddnn-capture-") as tmp:
        path = Path(tmp) / LABELS
        with path.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(labelled)
        recording = import_images(root, read_labels(path))
    save_mvmc(root / BUILT, recording.x, recording.y)
    return len(recording.x)
