import threading
from pathlib import Path

import numpy as np
import pytest

from ddnn.core.errors import DataError
from ddnn.data import (
    MultiViewData,
    absolute_spec,
    cut_tiles,
    load_mvmc,
    load_spec,
    load_tiles,
    parse_synth,
    sample_labels,
    save_mvmc,
)
from tests.helpers import make_mvmc_arrays


def test_mvmc_loader_reads_the_format(mvmc_file: Path):
    data = load_mvmc(mvmc_file)
    x, y = make_mvmc_arrays()
    assert data.x.shape == (60, 6, 3, 32, 32) and data.x.dtype == np.float32
    assert data.classes == ["car", "bus", "person"]
    assert data.labels.tolist() == y[:, 0].tolist()  # camera 0 always sees the object
    assert (data.view_labels == y).all()


def test_sample_label_is_the_class_the_seeing_cameras_report():
    y = np.array([[3, 1, 1, 3, 3, 3], [2, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3]])
    labels, keep = sample_labels(y, 3)
    assert labels[:2].tolist() == [1, 2]
    assert keep.tolist() == [True, True, False]


def test_seen_alone_counts_the_samples_no_other_camera_sees():
    views = np.array([[0, 3, 3], [1, 1, 3], [3, 3, 2], [2, 3, 3]])  # 3: absent
    data = MultiViewData(
        np.zeros((4, 3, 1, 2, 2), np.float32),
        views,
        views.min(axis=1),
        ["car", "bus", "person"],
        "small",
    )
    assert data.seen_alone() == [50.0, 0.0, 25.0]


def test_samples_seen_by_no_camera_are_left_out_and_counted(tmp_path: Path):
    x, y = make_mvmc_arrays(10)
    x[3], y[3] = 0.0, 3
    save_mvmc(tmp_path / "d.npz", x, y)
    data = load_mvmc(tmp_path / "d.npz")
    assert len(data) == 9 and "1 samples seen by no camera left out" in data.name


def test_split_is_reproducible_by_seed_and_80_20(mvmc_file: Path):
    data = load_mvmc(mvmc_file)
    a_train, a_test = data.split(seed=3)
    b_train, b_test = data.split(seed=3)
    _, c_test = data.split(seed=4)
    assert (len(a_train), len(a_test)) == (48, 12)
    assert np.array_equal(a_test.x, b_test.x)
    assert not np.array_equal(a_test.labels, c_test.labels) or not np.array_equal(
        a_test.x, c_test.x
    )


def test_writers_of_one_file_at_once_each_leave_it_whole(tmp_path: Path):
    """Two first uses of the synthetic cache at once (two test workers, two commands): each
    writes its own temporary file and replaces the cache whole; a writer that fails leaves
    the file as it was."""
    path = tmp_path / "cache.npz"
    arrays = [make_mvmc_arrays(300, seed=s) for s in range(4)]
    writers = [threading.Thread(target=save_mvmc, args=(path, *a)) for a in arrays]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    data = load_mvmc(path)
    assert any(np.array_equal(data.view_labels, y) for _, y in arrays)
    with pytest.raises(ValueError):
        save_mvmc(path, np.zeros((2, 6, 3, 32, 32)), np.array([["no number"]]))
    assert np.array_equal(load_mvmc(path).view_labels, data.view_labels)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]  # no temporary file left


def test_missing_data_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_mvmc(tmp_path / "nope.npz")


def test_non_npz_file_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_mvmc(bad)


def test_missing_array_is_named(tmp_path: Path):
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 6, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"missing array\(s\) \['y'\]"):
        load_mvmc(tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "message"),
    [
        ((4, 6, 32, 32), (4, 6), "X must be"),
        ((4, 6, 3, 32, 32), (4, 5), "y must be"),
    ],
)
def test_wrong_shapes_are_named(tmp_path: Path, x_shape, y_shape, message):
    np.savez(tmp_path / "d.npz", X=np.zeros(x_shape, np.float32), y=np.zeros(y_shape, np.int32))
    with pytest.raises(DataError, match=message):
        load_mvmc(tmp_path / "d.npz")


def test_out_of_range_labels_and_nan_pixels_are_refused(tmp_path: Path):
    x, y = make_mvmc_arrays(4)
    y[0, 0] = 7
    np.savez(tmp_path / "a.npz", X=x, y=y)
    with pytest.raises(DataError, match="y values must lie in 0..3"):
        load_mvmc(tmp_path / "a.npz")
    x, y = make_mvmc_arrays(4)
    x[1, 2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "b.npz", X=x, y=y)
    with pytest.raises(DataError, match="NaN"):
        load_mvmc(tmp_path / "b.npz")


def test_pickled_object_arrays_are_never_loaded(tmp_path: Path):
    np.savez(tmp_path / "d.npz", X=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError):
        load_mvmc(tmp_path / "d.npz")


def test_cut_tiles_is_row_major_and_channel_first():
    img = np.arange(4 * 6).reshape(1, 4, 6).astype(np.float32)
    tiles = cut_tiles(img, (2, 3))
    assert tiles.shape == (1, 6, 1, 2, 2)
    assert tiles[0, 0, 0].tolist() == [[0, 1], [6, 7]]
    assert tiles[0, 5, 0].tolist() == [[16, 17], [22, 23]]


def test_tiles_spec_loads_views_with_the_image_label(tmp_path: Path):
    x = np.random.default_rng(0).random((5, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "img.npz", X=x, y=np.arange(5) % 2)
    data = load_spec(f"tiles:{tmp_path / 'img.npz'}", grid="2x2")
    assert data.x.shape == (5, 4, 1, 14, 14)
    assert data.x.max() > 1.0  # 0..1 images are brought to the 0..255 convention
    assert data.classes == ["0", "1"] and data.labels.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(DataError, match="grid must look like"):
        load_spec(f"tiles:{tmp_path / 'img.npz'}", grid="two")


@pytest.mark.parametrize(
    "x, y, message",
    [
        (
            np.full((4, 8, 8), np.nan),
            np.arange(4) % 2,
            r"NaN or infinite values \(first in sample 0\)",
        ),
        (
            np.array([[[1.0, np.inf]]] * 4),
            np.arange(4) % 2,
            r"infinite values \(first in sample 0\)",
        ),
        (np.array(["a", "b"]), np.arange(2), "X must be numeric, got <U1"),
        (np.zeros((4, 8, 8)), np.zeros(4, int), "class 0 only: a classifier needs at least two"),
    ],
)
def test_tiles_that_no_camera_could_give_are_refused_by_name(tmp_path: Path, x, y, message):
    """NaN pixels once trained silently (the sign of NaN is no camera's), and one class
    failed as a config error about model.classes."""
    np.savez(tmp_path / "img.npz", X=x, y=y)
    with pytest.raises(DataError, match=message):
        load_tiles(tmp_path / "img.npz", grid=(1, 1))


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data spec 'imagenet'"):
        load_spec("imagenet")


def test_synth_spec_names_another_size_and_seed_of_the_same_world(tmp_path: Path, monkeypatch):
    """`synth:n=N,seed=S` is fresh data from the default set's world: what `ddnn results
    --held-out` judges the bars on."""
    monkeypatch.setenv("DDNN_DATA_DIR", str(tmp_path))  # the cache, not the checkout's
    assert parse_synth("") == (2000, 0)
    assert parse_synth("n=4000,seed=7") == (4000, 7)
    assert parse_synth(" seed=3 ") == (2000, 3)
    for bad in ("7", "n=x", "size=10", "n=-1", "seed=1.5"):
        with pytest.raises(DataError, match="synth takes n=N,seed=S"):
            parse_synth(bad)
    with pytest.raises(DataError, match="at least one sample"):
        parse_synth("n=0")
    data = load_spec("synth:n=12,seed=5")
    assert len(data) <= 12 and data.name == "synth:n=12,seed=5"  # unseen samples are left out
    again = load_spec("synth:n=12,seed=5")  # from the cache: the same samples
    assert np.array_equal(data.x, again.x) and np.array_equal(data.labels, again.labels)
    assert not np.array_equal(data.x[:4], load_spec("synth:n=12,seed=6").x[:4])


def test_a_model_records_its_data_with_an_absolute_path(tmp_path: Path, monkeypatch):
    """So that eval, demo and the devices find the model's data from any directory."""
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("mvmc:cams.npz") == f"mvmc:{tmp_path.resolve() / 'cams.npz'}"
    assert absolute_spec("tiles:sub/img.npz") == f"tiles:{tmp_path.resolve() / 'sub/img.npz'}"
    assert absolute_spec("synth") == "synth"
