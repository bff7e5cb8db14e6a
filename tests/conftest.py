"""Shared fixtures: small data sets in the MVMC format, written to temporary files, and the
tiny trained models (local + cloud, and local + edge + cloud) that several modules share."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from ddnn.data import save_mvmc
from tests.helpers import (
    EDGE,
    exported,
    make_mvmc_arrays,
    tiny_model,
    with_drop_between_edge_and_cloud,
)

# The README's default run is `pytest -n 2`: two workers share the 2 cores, so each one's
# PyTorch (and every `ddnn` it starts) computes on one thread; two threads per process spin
# waiting for each other on a busy machine (README, Results). The slow run is one process.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER is not None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


Made = Path | tuple[Path, ...]


def made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Made]
) -> Made:
    """`make(folder)`'s files, made once per test run: under xdist the workers share them
    (the first makes them under a file lock while the others wait, as pytest-xdist
    documents), so that a model is trained once, not once per worker. Every test only reads
    them (one that changes a model works on a copy)."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if WORKER is not None else root  # the run's, above each worker's
    folder = root / f"made-{name}"
    record = folder / "made.json"  # written last: its presence says the files are whole
    with FileLock(f"{folder}.lock"):
        if not record.is_file():
            folder.mkdir(exist_ok=True)
            made = make(folder)
            paths = [made] if isinstance(made, Path) else list(made)
            record.write_text(json.dumps([str(p) for p in paths]))
    paths = [Path(p) for p in json.loads(record.read_text())]
    return paths[0] if len(paths) == 1 else tuple(paths)


@pytest.fixture
def mvmc_file(tmp_path: Path) -> Path:
    path = tmp_path / "small_mvmc.npz"
    save_mvmc(path, *make_mvmc_arrays())
    return path


@pytest.fixture(scope="session")
def on_mvmc_file(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny local + cloud model trained on an MVMC-format file (200 samples), and the
    file: the live and fault tests check that devices replay it, not the default set."""

    def make(folder: Path) -> tuple[Path, Path]:
        data = folder / "cams.npz"
        save_mvmc(data, *make_mvmc_arrays(200, seed=1))
        return tiny_model(folder, "m", "0.5", "--data", f"mvmc:{data}"), data

    return made_once(tmp_path_factory, "on_mvmc", make)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The local + cloud model the live and fault tests share."""
    return made_once(tmp_path_factory, "tiny", lambda folder: tiny_model(folder, "c", "0.5"))


@pytest.fixture(scope="session")
def tiny_edge(tmp_path_factory) -> Path:
    """A local + edge + cloud model (two edges of three devices) whose thresholds send a
    real share of samples out of every exit."""
    return made_once(
        tmp_path_factory,
        "tiny_edge",
        lambda folder: tiny_model(folder, "e", "local=0.4,edge=0.3", "--set", EDGE),
    )


@pytest.fixture(scope="session")
def hybrid(tmp_path_factory) -> Path:
    """A local + edge + cloud model of what issue 11 adds, all at once: a learned router (the
    learned-router paper) decides at the local exit; the edge exit drops hopeless samples (the
    exit-placement paper: a drop threshold, here halfway through the edge's escalated samples); the
    devices are 2-bit, the edges 4-bit and the cloud float32 (the hybrid-precision paper's hybrid
    precision), so 2-bit and 4-bit maps travel. A real share of samples leaves at every exit, and
    some abstain."""
    settings = [
        "--set", EDGE, "--set", "exits.local.policy=router",
        "--set", "model.device.precision=2bit", "--set", "model.edge.precision=4bit",
        "--set", "model.cloud.precision=float",
    ]  # fmt: skip

    def make(folder: Path) -> Path:
        model = tiny_model(folder, "h", "local=0.4,edge=0.3", *settings)
        return with_drop_between_edge_and_cloud(model)

    return made_once(tmp_path_factory, "hybrid", make)


@pytest.fixture(scope="session")
def with_hybrid(hybrid: Path, tmp_path_factory) -> Path:
    """The exported hybrid model."""
    return made_once(tmp_path_factory, "with_hybrid", lambda f: exported(hybrid, f / "artifacts"))


@pytest.fixture(scope="session")
def plain(tiny: Path, tmp_path_factory) -> Path:
    """The exported local + cloud model."""
    return made_once(tmp_path_factory, "plain", lambda f: exported(tiny, f / "artifacts"))


@pytest.fixture(scope="session")
def with_edges(tiny_edge: Path, tmp_path_factory) -> Path:
    """The exported local + edge + cloud model."""
    return made_once(tmp_path_factory, "edges", lambda f: exported(tiny_edge, f / "artifacts"))
