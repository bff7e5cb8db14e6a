"""Shared fixtures: small data sets in the MVMC format, written to temporary files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddnn.data import save_mvmc


def make_mvmc_arrays(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small learnable MVMC-format set: the class is written into a corner patch of
    the views that see the object; one camera in three misses it (blank view, label 3)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.uniform(0, 120, (n, 6, 3, 32, 32)).astype(np.float32)
    for i, c in enumerate(labels):
        x[i, :, c, :10, :10] = 255.0
    y = np.repeat(labels[:, None], 6, axis=1).astype(np.int32)
    absent = rng.random((n, 6)) < 1 / 3
    absent[:, 0] = False  # every sample is seen by at least one camera
    x[absent] = 0.0
    y[absent] = 3
    return x, y


@pytest.fixture
def mvmc_file(tmp_path: Path) -> Path:
    path = tmp_path / "small_mvmc.npz"
    save_mvmc(path, *make_mvmc_arrays())
    return path


def tiny_model(tmp: Path, name: str, fractions: str, *extra: str) -> Path:
    """A model trained briefly on the default synthetic set, with thresholds set so that a
    real share of samples leaves at every exit (live tests must cover every path)."""
    from tests.test_cli import ddnn_json

    model = tmp / f"{name}.pt"
    ddnn_json("train", "--out", str(model), "--epochs", "3", *extra, timeout=600)
    ddnn_json("calibrate", "--model", str(model), "--exit-fraction", fractions)
    return model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The local + cloud model the live and fault tests share."""
    return tiny_model(tmp_path_factory.mktemp("tiny"), "c", "0.5")
