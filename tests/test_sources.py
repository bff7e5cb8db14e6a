"""End devices' frame sources, on real files: replay, video, image folders, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ddnn.core.config import ModelConfig, TrainConfig
from ddnn.core.errors import DataError
from ddnn.data import load_mvmc, replay_part, save_mvmc
from devices.sources import (
    FrameSource,
    ImageFolderSource,
    ReplaySource,
    VideoSource,
    open_source,
)
from tests.helpers import make_mvmc_arrays

SHAPE = (3, 32, 32)
# Solid BGR colours, as OpenCV writes them, and the RGB a device must see.
BGR = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)]
RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def solid(bgr: tuple[int, int, int], h: int = 48, w: int = 64) -> np.ndarray:
    return np.full((h, w, 3), bgr, dtype=np.uint8)


def assert_colour(image: np.ndarray, rgb: tuple[int, int, int], tol: float = 40) -> None:
    assert image.shape == SHAPE and image.dtype == np.float32
    means = image.reshape(3, -1).mean(axis=1)
    assert np.abs(means - np.array(rgb)).max() < tol, (means, rgb)


def write_video(path: Path, colours: list[tuple[int, int, int]]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for bgr in colours:
        writer.write(solid(bgr))
    writer.release()


def test_replay_gives_the_devices_view_of_the_test_rows(mvmc_file: Path):
    x, y = make_mvmc_arrays()
    _, test_rows = load_mvmc(mvmc_file).split(5, 0.75)
    cfg = TrainConfig(split_seed=5, test_fraction=0.25)
    src = open_source(f"mvmc:{mvmc_file}", 2, SHAPE, train_config=cfg)
    assert isinstance(src, ReplaySource) and isinstance(src, FrameSource)
    # every sample of the fixture is kept, so the split's rows index x directly
    rows = np.sort(np.random.default_rng(5).permutation(len(x))[45:])
    assert len(src) == len(rows) == len(test_rows) == 15
    frames = list(src)
    assert [f.sample for f in frames] == list(range(15))
    assert np.array_equal(np.stack([f.image for f in frames]), x[rows, 2])
    assert frames[0].image.dtype == np.float32
    again = src.frame(7)
    assert again is not None and np.array_equal(again.image, x[rows[7], 2])
    assert src.frame(15) is None and src.frame(-1) is None


def test_replay_parts_match_the_training_split(mvmc_file: Path):
    data = load_mvmc(mvmc_file)
    cfg = TrainConfig(split_seed=3, test_fraction=0.25)
    from ddnn.data import split

    parts = split(data, cfg)
    by_cfg = open_source(f"mvmc:{mvmc_file}", 1, SHAPE, train_config=cfg)
    no_val = TrainConfig(split_seed=3, test_fraction=0.25, validation_fraction=0)
    by_tuple = open_source(f"mvmc:{mvmc_file}", 1, SHAPE, train_config=no_val)
    assert np.array_equal(by_cfg.views, parts.test.x[:, 1])
    assert np.array_equal(by_tuple.views, parts.test.x[:, 1])
    val = open_source(f"mvmc:{mvmc_file}", 1, SHAPE, part="validation", train_config=cfg)
    assert np.array_equal(val.views, parts.validation.x[:, 1])
    assert len(open_source(f"mvmc:{mvmc_file}", 1, SHAPE, part="all")) == len(data)
    assert len(replay_part(data, "train", cfg)) == len(parts.train)
    # the default split is the default TrainConfig's test part
    default = open_source(f"mvmc:{mvmc_file}", 0, SHAPE)
    assert np.array_equal(default.views, split(data, TrainConfig()).test.x[:, 0])


def test_video_file_frames_are_rgb_in_the_model_shape(tmp_path: Path):
    path = tmp_path / "clip.avi"
    write_video(path, BGR)
    with open_source(str(path), 0, SHAPE) as src:
        assert isinstance(src, VideoSource) and not src.live
        frames = list(src)
        assert [f.sample for f in frames] == [0, 1, 2, 3]
        for f, rgb in zip(frames, RGB, strict=True):
            assert_colour(f.image, rgb)
        assert frames[0].image[0].mean() > 200  # red BGR frame: channel 0 (R) high
        # random access on a file: forward, the same frame again, then back
        third = src.frame(2)
        assert third is not None and third.sample == 2
        assert_colour(third.image, RGB[2])
        assert src.frame(2) is third
        first = src.frame(0)
        assert first is not None and first.sample == 0
        assert_colour(first.image, RGB[0])
        assert src.frame(9) is None
        with pytest.raises(TypeError):
            len(src)


def test_video_read_and_grey_models(tmp_path: Path):
    path = tmp_path / "cam{device}.avi"
    write_video(tmp_path / "cam1.avi", BGR[:2])
    src = open_source(str(path), 1, (1, 16, 20))  # {device} in the spec
    image = src.read()
    assert image is not None and image.shape == (1, 16, 20)
    assert 60 < image.mean() < 90  # grey of pure red is 0.299 * 255
    assert src.read() is not None and src.read() is None
    src.close()


def test_image_folder_skips_unreadable_files_and_counts_them(tmp_path: Path, caplog):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, bgr in enumerate(BGR[:3]):
        assert cv2.imwrite(str(folder / f"f{i * 5}.png"), solid(bgr))  # f0, f5, f10
    (folder / "f7.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        src = open_source(str(folder), 3, SHAPE)
        frames = list(src)
    assert isinstance(src, ImageFolderSource)
    assert len(frames) == 3 and len(src) == 4
    assert [p.name for p in src.paths] == ["f0.png", "f5.png", "f7.png", "f10.png"]
    assert [f.sample for f in frames] == [0, 1, 3]  # ids stay file positions
    for f, rgb in zip(frames, RGB, strict=False):
        assert_colour(f.image, rgb, tol=1)
    assert src.frame(2) is None
    assert [r.getMessage() for r in caplog.records].count(  # logged once
        f"{src.name}: skipping f7.png (not a readable image)"
    ) == 1
    last = src.frame(3)
    assert last is not None
    assert_colour(last.image, RGB[2], tol=1)


@pytest.mark.parametrize(
    ("spec", "device", "message"),
    [
        ("{tmp}/missing.avi", 0, "no such file or folder"),
        ("images:{tmp}/missing", 0, "does not exist"),
        ("video:{tmp}/missing.avi", 0, "does not exist"),
        ("{tmp}/empty", 0, "holds no images"),
        ("mvmc:{tmp}/small_mvmc.npz", 6, "device 6 is outside the 6 views"),
        ("{tmp}/small_mvmc.npz", 0, "replay it as mvmc:"),
        ("{tmp}/bad.avi", 0, "could not be opened"),
        ("camera:99", 0, "could not be opened"),
        ("camera:front", 0, "camera:N"),
    ],
)
def test_errors_name_the_problem(
    tmp_path: Path, mvmc_file: Path, spec: str, device: int, message: str
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.avi").write_text("not a video")
    with pytest.raises(DataError, match=message):
        open_source(spec.format(tmp=tmp_path), device, SHAPE)


def test_replay_errors(mvmc_file: Path):
    spec = f"mvmc:{mvmc_file}"
    with pytest.raises(DataError, match="unknown part 'dev'"):
        open_source(spec, 0, SHAPE, part="dev")
    with pytest.raises(DataError, match=r"model takes \(3, 16, 16\)"):
        open_source(spec, 0, (3, 16, 16))
    with pytest.raises(DataError, match="no validation part"):
        open_source(
            spec, 0, SHAPE, part="validation", train_config=TrainConfig(validation_fraction=0)
        )
    with pytest.raises(DataError, match="must be 0 or more"):
        open_source(spec, -1, SHAPE)


def test_replay_refuses_a_set_that_does_not_fit_the_model(tmp_path: Path, mvmc_file: Path):
    model = ModelConfig()  # 6 devices of (3, 32, 32), classes car, bus, person
    assert len(open_source(f"mvmc:{mvmc_file}", 0, SHAPE, model=model)) > 0
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (10, 64, 96, 3)).astype(np.float32)  # 6 tiles of 3x32x32
    np.savez(tmp_path / "two.npz", X=images, y=rng.integers(0, 2, 10))
    with pytest.raises(DataError, match=r"classes \['0', '1'\]\) does not fit the model"):
        open_source(f"tiles:{tmp_path / 'two.npz'}", 0, SHAPE, model=model)
    x, y = make_mvmc_arrays(10)
    save_mvmc(tmp_path / "five.npz", x[:, :5], y[:, :5])
    with pytest.raises(DataError, match="5 views .* does not fit the model"):
        open_source(f"mvmc:{tmp_path / 'five.npz'}", 0, SHAPE, model=model)


def test_live_sources_refuse_random_access(tmp_path: Path):
    write_video(tmp_path / "clip.avi", BGR[:1])
    src = VideoSource(str(tmp_path / "clip.avi"), SHAPE, live=True)
    with pytest.raises(DataError, match="shared by the devices"):
        src.frame(0)
    src.close()
