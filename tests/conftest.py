"""Shared fixtures: small data sets in the MVMC format, written to temporary files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddnn.data import save_mvmc
from tests.helpers import make_mvmc_arrays, tiny_model


@pytest.fixture
def mvmc_file(tmp_path: Path) -> Path:
    path = tmp_path / "small_mvmc.npz"
    save_mvmc(path, *make_mvmc_arrays())
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The local + cloud model the live and fault tests share."""
    return tiny_model(tmp_path_factory.mktemp("tiny"), "c", "0.5")
