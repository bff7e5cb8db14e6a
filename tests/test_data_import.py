"""`ddnn data import` (your own recordings into the MVMC format) and `ddnn data inspect`,
through the real command line, on the default synthetic set written out as a user's
recording would be: per-camera PNG folders (or FFV1 videos) and a labels CSV.

Synthetic pixels are non-integer floats, and a recording holds what a camera gives, uint8:
so a round trip is exact against the synthetic X rounded as a camera rounds it
(`camera_frames`), not against the floats.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from ddnn.core.payloads import camera_frames
from ddnn.data import MVMC_CLASSES
from ddnn.data.inspection import (
    ABSENT_GREY,
    GAP_PX,
    HEADER_PX,
    LABEL_PX,
    MIN_CELL_PX,
    sheet_rows,
)
from ddnn.data.synth import synthesize
from tests.helpers import ddnn

ABSENT = len(MVMC_CLASSES)
N = 60


@dataclass
class Recorded:
    root: Path  # images/cam<i>/<id>.png, labels.csv
    frames: np.ndarray  # (N, V, 3, H, W) uint8 RGB, as a camera gives them
    y: np.ndarray  # (N, V)

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"


def write_labels(path: Path, y: np.ndarray, cam_columns: bool = True) -> None:
    """One row per sample: its id (= its index), its label, and 1/0 per camera that sees it."""
    v = y.shape[1]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sample", "label", *([f"cam{c}" for c in range(v)] if cam_columns else [])])
        for i, views in enumerate(y):
            label = MVMC_CLASSES[int(views[views < ABSENT][0])]
            out.writerow([i, label, *((views < ABSENT).astype(int) if cam_columns else [])])


def bgr(view: np.ndarray) -> np.ndarray:
    """(C, H, W) RGB -> (H, W, C) BGR, as OpenCV writes it."""
    return np.ascontiguousarray(view.transpose(1, 2, 0)[..., ::-1])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Recorded:
    """The default synthetic set (60 samples) as a recording: a PNG per present view only,
    the CSV with cam<i> columns from y, and one frame that no row labels (999.png)."""
    root = tmp_path_factory.mktemp("recording")
    x, y = synthesize(N, seed=0)
    frames = camera_frames(x)
    for camera in range(y.shape[1]):
        folder = root / "images" / f"cam{camera}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(y[:, camera] < ABSENT):
            cv2.imwrite(str(folder / f"{i}.png"), bgr(frames[i, camera]))
    cv2.imwrite(str(root / "images" / "cam0" / "999.png"), bgr(frames[0, 0]))
    write_labels(root / "labels.csv", y)
    return Recorded(root, frames, y)


def import_json(*args: str) -> dict:
    return json.loads(ddnn("data", "import", *args, "--json").stdout)


def test_image_folders_give_back_the_synthetic_set_exactly(recorded, tmp_path):
    out = tmp_path / "rec.npz"
    summary = import_json(
        "--images", str(recorded.images), "--labels", str(recorded.labels), "--out", str(out)
    )
    with np.load(out) as z:
        x, y = z["X"], z["y"]
    assert np.array_equal(y, recorded.y)
    assert x.dtype == np.float32 and np.array_equal(x, recorded.frames.astype(np.float32))
    seen = recorded.y < ABSENT
    assert summary["path"] == str(out) and summary["samples"] == N
    assert summary["cameras"] == 6 and summary["view_shape"] == [3, 32, 32]
    assert summary["views_present"] == seen.sum(axis=0).tolist()
    labels = [MVMC_CLASSES[int(v[v < ABSENT][0])] for v in recorded.y]
    assert summary["classes"] == {c: labels.count(c) for c in MVMC_CLASSES}
    assert summary["unlabelled_frames_skipped"] == 1  # cam0/999.png
    assert summary["absent_frames_left_out"] == 0


def test_without_cam_columns_a_camera_with_a_frame_sees_the_object(recorded, tmp_path):
    labels, out = tmp_path / "labels.csv", tmp_path / "a.npz"
    write_labels(labels, recorded.y, cam_columns=False)
    import_json("--images", str(recorded.images), "--labels", str(labels), "--out", str(out))
    with np.load(out) as z:
        assert np.array_equal(z["y"], recorded.y) and np.array_equal(z["X"], recorded.frames)


def test_a_camera_marked_0_is_absent_though_it_has_a_frame(recorded, tmp_path):
    """A cam<i> column of 0 blanks the view (zeros, absent) and the frame is counted; a
    camera without a column sees the object where it has a frame."""
    seen = recorded.y < ABSENT
    i = int(np.flatnonzero(seen.sum(axis=1) > 1)[0])
    camera = int(np.flatnonzero(seen[i])[0])
    label = MVMC_CLASSES[int(recorded.y[i, camera])]
    labels, out = tmp_path / "labels.csv", tmp_path / "a.npz"
    labels.write_text(f"sample,label,cam{camera}\n{i},{label},0\n")
    summary = import_json(
        "--images", str(recorded.images), "--labels", str(labels), "--out", str(out)
    )
    expected = recorded.y[i].copy()
    expected[camera] = ABSENT
    with np.load(out) as z:
        assert np.array_equal(z["y"], expected[None])
        assert not z["X"][0, camera].any()
        others = [c for c in range(6) if c != camera]
        assert np.array_equal(z["X"][0, others], recorded.frames[i, others])
    assert summary["samples"] == 1 and summary["absent_frames_left_out"] == 1
    assert summary["unlabelled_frames_skipped"] == int(seen.sum()) + 1 - int(seen[i].sum())


def test_grey_frames_give_one_channel_and_size_resizes_them(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 2, 40, 48), dtype=np.uint8)
    for camera in range(2):
        (tmp_path / "images" / f"cam{camera}").mkdir(parents=True)
        for i in range(3 - camera):  # cam1 has no frame of sample 2: a missing view
            cv2.imwrite(str(tmp_path / "images" / f"cam{camera}" / f"{i}.png"), grey[i, camera])
    labels, out = tmp_path / "labels.csv", tmp_path / "g.npz"
    labels.write_text("sample,label\n0,car\n1,bus\n2,person\n")
    args = ["--images", str(tmp_path / "images"), "--labels", str(labels), "--size", "20x24"]
    summary = import_json(*args, "--out", str(out))
    assert summary["view_shape"] == [1, 20, 24]
    with np.load(out) as z:
        assert z["y"].tolist() == [[0, 0], [1, 1], [2, ABSENT]]
        for i, camera in [(0, 0), (1, 1), (2, 0)]:
            resized = cv2.resize(grey[i, camera], (24, 20), interpolation=cv2.INTER_AREA)
            assert np.array_equal(z["X"][i, camera, 0], resized)
        assert not z["X"][2, 1].any()


def test_ffv1_videos_give_back_the_synthetic_set_exactly(recorded, tmp_path):
    """FFV1 in .mkv is lossless; every camera's video has every frame (all zeros where the
    synthetic camera does not see the object), and the cam<i> columns say which are views."""
    videos = tmp_path / "videos"
    write_videos(videos, recorded.frames)
    out = tmp_path / "v.npz"
    summary = import_json(
        "--videos", str(videos), "--labels", str(recorded.labels), "--out", str(out)
    )
    with np.load(out) as z:
        assert np.array_equal(z["y"], recorded.y) and np.array_equal(z["X"], recorded.frames)
    assert summary["absent_frames_left_out"] == int((recorded.y == ABSENT).sum())
    assert summary["unlabelled_frames_skipped"] == 0


def write_videos(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for camera in range(frames.shape[1]):
        h, w = frames.shape[-2:]
        path = folder / f"cam{camera}.mkv"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h))
        assert writer.isOpened(), f"this OpenCV cannot write FFV1 to {path}"
        for frame in frames[:, camera]:
            writer.write(bgr(frame))
        writer.release()


def test_video_errors_name_the_files(recorded, tmp_path):
    videos = tmp_path / "videos"
    write_videos(videos, recorded.frames[:10])
    write_videos(tmp_path / "short", recorded.frames[:7, 3:4])
    (tmp_path / "short" / "cam0.mkv").replace(videos / "cam3.mkv")
    labels = tmp_path / "labels.csv"
    write_labels(labels, recorded.y[:10])
    args = ["--videos", str(videos), "--labels", str(labels)]
    cam0, cam3 = videos / "cam0.mkv", videos / "cam3.mkv"
    fails(args, tmp_path, f"{cam0} has 10 frames, {cam3} has 7")
    cam3.write_bytes(b"not a video")
    fails(args, tmp_path, f"{cam3} is not a readable video")
    write_videos(videos, recorded.frames[:9])
    fails(args, tmp_path, "labels.csv line 11: sample 9 names no frame: the videos have 9 frames")


def fails(args: list[str], tmp_path: Path, *expected: str) -> None:
    """`ddnn data import ARGS` ends in one line `error: ...` holding `expected` (exit status
    2, no traceback), and leaves the output file it was given as it was."""
    out = tmp_path / "kept.npz"
    out.write_bytes(b"the old file")
    proc = ddnn("data", "import", *args, "--out", str(out), check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    assert out.read_bytes() == b"the old file"


def edit_line(path: Path, line: int, text: str) -> None:
    rows = path.read_text().splitlines()
    rows[line - 1 : line] = [text]
    path.write_text("\n".join(rows) + "\n")


def present(y: np.ndarray, nth: int = 5) -> tuple[int, int]:
    """A (sample, camera) that has a frame."""
    i, camera = np.argwhere(y < ABSENT)[nth]
    return int(i), int(camera)


def unreadable(root: Path, y: np.ndarray) -> list[str]:
    i, camera = present(y)
    (root / "images" / f"cam{camera}" / f"{i}.png").write_bytes(b"not a png")
    return [f"cam{camera}/{i}.png is not a readable image", f"labels.csv line {i + 2}"]


def other_size(root: Path, y: np.ndarray) -> list[str]:
    i, camera = present(y)
    cv2.imwrite(str(root / "images" / f"cam{camera}" / f"{i}.png"), np.zeros((40, 30, 3), np.uint8))
    return [f"cam{camera}/{i}.png (", f"labels.csv line {i + 2}) is 40x30", "cam0/0.png", "32x32"]


def two_files(root: Path, y: np.ndarray) -> list[str]:
    i, camera = present(y)
    folder = root / "images" / f"cam{camera}"
    shutil.copy(folder / f"{i}.png", folder / f"{i}.jpg")
    return [f"two frames of sample {i}", f"cam{camera}/{i}.jpg", f"cam{camera}/{i}.png"]


def gap(root: Path, y: np.ndarray) -> list[str]:
    (root / "images" / "cam3").rename(root / "images" / "cam7")
    return ["images has cam0, cam1, cam2, cam4, cam5, cam7 but no cam3"]


def unknown_label(root: Path, y: np.ndarray) -> list[str]:
    edit_line(root / "labels.csv", 5, "3,truck" + ",1" * 6)
    return ["labels.csv line 5: unknown label 'truck'", "car, bus, person"]


def bad_sample_id(root: Path, y: np.ndarray) -> list[str]:
    edit_line(root / "labels.csv", 4, "-2,car" + ",1" * 6)
    return ["labels.csv line 4: sample id '-2' is not a non-negative integer"]


def repeated_sample(root: Path, y: np.ndarray) -> list[str]:
    edit_line(root / "labels.csv", 6, "2,car" + ",1" * 6)
    return ["labels.csv line 6: sample 2 repeats line 4"]


def missing_column(root: Path, y: np.ndarray) -> list[str]:
    edit_line(root / "labels.csv", 1, "sample,class," + ",".join(f"cam{c}" for c in range(6)))
    return ["labels.csv line 1: missing column(s) label"]


def no_frame(root: Path, y: np.ndarray) -> list[str]:
    edit_line(root / "labels.csv", N + 2, "500,bus,1,0,0,0,0,0")
    return [f"labels.csv line {N + 2}: sample 500 names no frame in any camera"]


def seen_without_frame(root: Path, y: np.ndarray) -> list[str]:
    i, camera = map(int, np.argwhere(y == ABSENT)[0])
    marks = ["1" if c == camera else str(int(v < ABSENT)) for c, v in enumerate(y[i])]
    label = MVMC_CLASSES[int(y[i][y[i] < ABSENT][0])]
    edit_line(root / "labels.csv", i + 2, f"{i},{label}," + ",".join(marks))
    return [f"labels.csv line {i + 2}: cam{camera} is 1", f"cam{camera} has no frame of sample {i}"]


@pytest.mark.parametrize(
    "spoil",
    [
        unreadable,
        other_size,
        two_files,
        gap,
        unknown_label,
        bad_sample_id,
        repeated_sample,
        missing_column,
        no_frame,
        seen_without_frame,
    ],
)
def test_each_mistake_is_one_line_naming_file_and_row_and_keeps_the_output(
    recorded, tmp_path, spoil
):
    root = tmp_path / "copy"
    shutil.copytree(recorded.root, root)
    expected = spoil(root, recorded.y)
    args = ["--images", str(root / "images"), "--labels", str(root / "labels.csv")]
    fails(args, tmp_path, *expected)


def test_a_failed_import_creates_no_output(recorded, tmp_path):
    out = tmp_path / "new.npz"
    args = ["--images", str(tmp_path / "nothing"), "--labels", str(recorded.labels)]
    proc = ddnn("data", "import", *args, "--out", str(out), check=False)
    assert (
        proc.returncode == 2 and "image folder" in proc.stderr and "does not exist" in proc.stderr
    )
    assert not out.exists()


def test_output_paths_are_checked_before_the_work(recorded, tmp_path):
    args = ["--images", str(recorded.images), "--labels", str(recorded.labels)]
    proc = ddnn("data", "import", *args, "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and f"cannot write the data file {tmp_path}" in proc.stderr
    assert "importing" not in proc.stderr  # refused before any frame was read
    proc = ddnn("data", "inspect", str(recorded.labels), check=False)
    assert proc.returncode == 2 and "not a readable .npz file" in proc.stderr


def test_inspect_counts_and_draws_the_contact_sheet(recorded, tmp_path):
    from ddnn.data import save_mvmc

    data = tmp_path / "set.npz"
    save_mvmc(data, recorded.frames.astype(np.float32), recorded.y)
    report = json.loads(ddnn("data", "inspect", str(data), "--samples", "5", "--json").stdout)
    seen = recorded.y < ABSENT
    labels = [int(v[v < ABSENT][0]) for v in recorded.y]
    assert report["samples"] == N and report["cameras"] == 6
    assert report["classes"] == {c: labels.count(k) for k, c in enumerate(MVMC_CLASSES)}
    assert report["views_present"] == seen.sum(axis=0).tolist()
    assert report["views_present_percent"] == [round(100 * m, 1) for m in seen.mean(axis=0)]
    assert report["view_shape"] == [3, 32, 32]
    rows = report["sheet_samples"]
    assert rows == sheet_rows(N, 5) and rows[0] == 0 and rows[-1] == N - 1 and len(rows) == 5
    assert report["sheet"] == str(tmp_path / "set-sheet.png")
    sheet = cv2.imread(report["sheet"])
    cell = MIN_CELL_PX + GAP_PX  # 32 px views, scaled 2x
    assert sheet.shape == (HEADER_PX + 5 * cell, LABEL_PX + 6 * cell, 3)
    for r, i in enumerate(rows):
        for camera in range(6):
            top, left = HEADER_PX + r * cell, LABEL_PX + camera * cell
            drawn = sheet[top : top + MIN_CELL_PX : 2, left : left + MIN_CELL_PX : 2]
            if seen[i, camera]:
                assert np.array_equal(drawn, bgr(recorded.frames[i, camera]))
            else:
                assert (drawn == ABSENT_GREY).all()
