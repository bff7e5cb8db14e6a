"""The synthetic multi-camera generator: format, determinism, blank views."""

import numpy as np
import pytest

from ddnn.data import from_mvmc_arrays, synth


@pytest.fixture(scope="module")
def small():
    return synth.synthesize(40, seed=5)


def test_output_is_in_the_mvmc_format(small):
    x, y = small
    assert x.shape == (40, 6, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (40, 6) and y.dtype == np.int32
    assert x.min() >= 0 and x.max() <= 255
    assert set(np.unique(y)) <= {0, 1, 2, synth.ABSENT}
    assert synth.CLASSES == ("car", "bus", "person")


def test_absent_views_are_blank_and_present_views_are_not(small):
    x, y = small
    absent = y == synth.ABSENT
    assert (x[absent] == 0).all()
    assert (x[~absent].reshape(int((~absent).sum()), -1).max(axis=1) > 0).all()


def test_every_sample_is_seen_and_cameras_agree_on_its_class(small):
    x, y = small
    for row in y:
        seen = row[row != synth.ABSENT]
        assert len(seen) >= 1 and len(set(seen.tolist())) == 1
    data = from_mvmc_arrays(x, y, "synth")
    assert len(data) == 40


def test_same_seed_same_data_other_seed_other_data(small):
    x, y = small
    x2, y2 = synth.synthesize(40, seed=5)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = synth.synthesize(40, seed=6)
    assert not np.array_equal(x, x3)


def test_progress_is_reported():
    seen = []
    synth.synthesize(5, seed=0, progress=seen.append)
    assert seen and seen[-1] == 5
