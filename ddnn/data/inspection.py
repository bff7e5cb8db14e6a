"""What an MVMC-format set holds (`ddnn data inspect`, and the summary of `ddnn data
import`): samples per class, views present per camera, the view shape; and a contact sheet,
a PNG of some samples (rows) by camera (columns), to see with one's own eyes that the frames
and labels went where they should before a model is trained on them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ddnn.core.errors import DataError
from ddnn.core.files import replaced, writable_file
from ddnn.core.payloads import camera_frames
from ddnn.data.multiview import MultiViewData

MIN_CELL_PX = 64  # views are scaled up by a whole factor to at least this many pixels
GAP_PX = 2  # between cells
LABEL_PX = 80  # the left margin with each row's sample index and class
HEADER_PX = 16  # the top margin with the cameras' names
BACKGROUND, ABSENT_GREY, TEXT = (16, 16, 16), (64, 64, 64), (230, 230, 230)
_FONT, _FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.4


def describe(data: MultiViewData) -> dict[str, Any]:
    """Samples, cameras, view shape (C, H, W), samples per class, views present per camera
    (count and %)."""
    seen = data.view_labels < len(data.classes)
    return {
        "samples": len(data),
        "cameras": data.n_views,
        "view_shape": list(data.view_shape),
        "classes": {c: int((data.labels == i).sum()) for i, c in enumerate(data.classes)},
        "views_present": [int(n) for n in seen.sum(axis=0)],
        "views_present_percent": [round(100.0 * float(m), 1) for m in seen.mean(axis=0)],
    }


def sheet_rows(n_samples: int, k: int) -> list[int]:
    """`k` sample indices evenly spread over `n_samples` (all of them where there are fewer):
    a recording's start, middle and end, not its first seconds only."""
    return sorted({round(i) for i in np.linspace(0, n_samples - 1, min(k, n_samples))})


def cell_size(view_shape: tuple[int, int, int]) -> tuple[int, int]:
    """A view's (height, width) on the sheet: scaled by the smallest whole factor that makes
    both at least MIN_CELL_PX (pixels stay sharp squares)."""
    _, h, w = view_shape
    scale = max(1, math.ceil(MIN_CELL_PX / min(h, w)))
    return h * scale, w * scale


def contact_sheet(data: MultiViewData, rows: list[int]) -> np.ndarray:
    """The sheet as a BGR uint8 image: one row per sample of `rows`, labelled with its index
    and class, one column per camera; a view the camera does not have is dark grey."""
    ch, cw = cell_size(data.view_shape)
    sheet = np.empty(
        (HEADER_PX + len(rows) * (ch + GAP_PX), LABEL_PX + data.n_views * (cw + GAP_PX), 3),
        np.uint8,
    )
    sheet[:] = BACKGROUND
    for camera in range(data.n_views):
        _text(sheet, f"cam{camera}", LABEL_PX + camera * (cw + GAP_PX), HEADER_PX - 4)
    for r, index in enumerate(rows):
        top = HEADER_PX + r * (ch + GAP_PX)
        _text(sheet, f"#{index}", 4, top + ch // 2 - 4)
        _text(sheet, data.classes[int(data.labels[index])], 4, top + ch // 2 + 12)
        views = np.ascontiguousarray(camera_frames(data.x[index]).transpose(0, 2, 3, 1))  # RGB
        for camera, view in enumerate(views):
            left = LABEL_PX + camera * (cw + GAP_PX)
            cell = sheet[top : top + ch, left : left + cw]
            if data.view_labels[index, camera] >= len(data.classes):
                cell[:] = ABSENT_GREY
            else:
                big = cv2.resize(view, (cw, ch), interpolation=cv2.INTER_NEAREST)
                cell[:] = big[..., None] if big.ndim == 2 else big[..., ::-1]  # RGB -> BGR
    return sheet


def _text(image: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(image, text, (x, y), _FONT, _FONT_SCALE, TEXT, 1, cv2.LINE_AA)


def writable_sheet(path: Path) -> Path:
    """`path`, once it is known that an image of its kind (by its extension) can be written
    there: checked before the sheet is drawn."""
    writable_file(path, "contact sheet")
    if not cv2.haveImageWriter(str(path)):
        raise DataError(f"cannot write the contact sheet {path}: give it a .png name")
    return path


def write_sheet(path: Path, sheet: np.ndarray) -> None:
    """Write the sheet whole or not at all (`replaced`)."""
    with replaced(path, f".tmp{path.suffix}") as tmp:
        if not cv2.imwrite(str(tmp), sheet):
            raise DataError(f"cannot write the contact sheet {path}")
