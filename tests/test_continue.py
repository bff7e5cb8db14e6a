"""Hard examples out (`ddnn hard`), going on from a trained model on them (`ddnn train
--init`, tiers frozen with `--freeze`, old data mixed in) and comparing versions on the same
samples (`ddnn eval --against`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ddnn.core.config import load_config
from ddnn.core.errors import ConfigError, DataError
from ddnn.core.hard import DEFAULT_ENTROPY
from ddnn.data import MultiViewData, load_mvmc, mixed, split, synthetic
from ddnn.nn.checkpoint import load_model
from ddnn.nn.train import training_stages
from tests.helpers import ddnn, ddnn_json

NEW = "synth:n=300,seed=7"  # fresh samples of the same world


def artifacts(model: Path, folder: Path) -> dict[str, bytes]:
    ddnn_json("export", "--model", str(model), "--out", str(folder))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".npz", ".bits")}


def go_on(init: Path, out: Path, *args: str) -> dict:
    return ddnn_json(
        "train", "--init", str(init), "--data", NEW, "--epochs", "2", "--out", str(out), *args
    )


def test_devices_frozen_keep_every_device_artifact_byte_for_byte(tiny: Path, tmp_path: Path):
    """Only the upper tiers change: every device's export is the old one's, the cloud's is
    not; the report's `test_before` is the old model on the same test split."""
    new = tmp_path / "new.pt"
    report = go_on(tiny, new, "--freeze", "devices", "--mix", "0.5")
    assert report["init"] == {"model": str(tiny), "old_data": "synth", "mix": 0.5}
    before = ddnn_json("eval", "--model", str(tiny), "--data", NEW)
    assert report["test_before"]["accuracy"] == before["accuracy"]
    old, now = artifacts(tiny, tmp_path / "old"), artifacts(new, tmp_path / "now")
    devices = [name for name in old if name.startswith("device-")]
    assert len(devices) == 12  # six devices, .bits and .npz
    assert all(old[name] == now[name] for name in devices)
    assert old["cloud.npz"] != now["cloud.npz"]

    compared = ddnn_json("eval", "--model", str(new), "--against", str(tiny))
    mine = ddnn_json("eval", "--model", str(new))  # the test part of its own data, NEW
    assert compared["against"]["accuracy"] == before["accuracy"]
    for tier, gain in compared["gain"]["accuracy"].items():
        assert gain == pytest.approx(mine["accuracy"][tier] - before["accuracy"][tier], abs=0.01)
    assert compared["gain"]["accuracy"]["local"] == 0  # the local exit is the devices' heads


def test_without_freezing_the_devices_change_and_edges_freeze_too(tiny_edge: Path, tmp_path: Path):
    free, frozen = tmp_path / "free.pt", tmp_path / "frozen.pt"
    go_on(tiny_edge, free, "--mix", "0")
    go_on(tiny_edge, frozen, "--freeze", "devices,edges")
    old = artifacts(tiny_edge, tmp_path / "old")
    changed = artifacts(free, tmp_path / "free")
    kept = artifacts(frozen, tmp_path / "frozen")
    lower = [name for name in old if name.startswith(("device-", "edge-"))]
    assert any(name.startswith("edge-") for name in lower)
    assert any(old[name] != changed[name] for name in lower if name.startswith("device-"))
    assert all(old[name] == kept[name] for name in lower)
    assert old["cloud.npz"] != kept["cloud.npz"]


def test_bad_continuations_are_refused_by_name(tiny: Path, tmp_path: Path):
    out = str(tmp_path / "x.pt")
    wrong_tier = ddnn("train", "--init", str(tiny), "--freeze", "clouds", "--out", out, check=False)
    assert wrong_tier.returncode != 0 and "--freeze takes devices or edges" in wrong_tier.stderr
    no_edges = ddnn("train", "--init", str(tiny), "--freeze", "edges", "--out", out, check=False)
    assert "the model has no edge tier" in no_edges.stderr
    reshaped = ddnn(
        "train",
        "--init",
        str(tiny),
        "--set",
        "model.cloud.conv_filters=[8]",
        "--out",
        out,
        check=False,
    )
    assert f"the weights of {tiny} do not fit the config with --set" in reshaped.stderr
    assert not Path(out).exists()


def test_frozen_tiers_leave_the_stages_that_train_nothing():
    layerwise = load_config(overrides=["train.strategy=layerwise", "train.freeze=[devices]"])
    stages = training_stages(layerwise)
    assert [s.name for s in stages] == ["cloud tier"]  # the local exit (MP) has no weights
    assert not stages[0].trains("device_slices.0.head.weight")
    joint = training_stages(load_config(overrides=["train.freeze=[devices]"]))
    assert joint[0].trains("cloud.0.weight") and not joint[0].trains("device_slices.3.x")
    with pytest.raises(ConfigError, match="no edge tier"):
        training_stages(load_config(overrides=["train.freeze=[edges]"]))


def test_mixing_draws_the_old_share_and_refuses_other_views():
    data = synthetic(120, seed=3)
    new, old = data.subset(np.arange(40)), data.subset(np.arange(40, 120))
    both = mixed(new, old, 0.5, seed=0)
    assert len(both) == 80 and np.array_equal(both.x[:40], new.x)
    drawn = {bytes(row) for row in both.x[40:].reshape(40, -1).view(np.uint8)}
    assert drawn <= {bytes(row) for row in old.x.reshape(80, -1).view(np.uint8)}
    assert len(mixed(new, old, 0.9, seed=0)) == 120  # asks for 360: all 80 it has
    three = MultiViewData(old.x[:, :3], old.view_labels[:, :3], old.labels, old.classes, "3")
    with pytest.raises(DataError, match="differ in views"):
        mixed(new, three, 0.5, seed=0)


def test_hard_examples_are_the_samples_the_decisions_escalated_or_left_unsure(
    tiny: Path, tmp_path: Path
):
    """Checked against `ddnn eval --decisions` on the same samples: at --entropy 1 the hard
    file holds exactly the escalated samples, with their frames, labels and decisions; at
    the default level the escalated ones and some local exits, each above the level."""
    decisions = tmp_path / "decisions.jsonl"
    ddnn_json("eval", "--model", str(tiny), "--decisions", str(decisions))
    decided = [json.loads(line) for line in decisions.read_text().splitlines()]
    escalated = [d["sample"] for d in decided if d["exit"] != "local"]
    test = split(synthetic(), load_model(tiny)[1].train).test
    strict = ddnn_json(
        "hard",
        "--model",
        str(tiny),
        "--part",
        "test",
        "--entropy",
        "1",
        "--out",
        str(tmp_path / "strict.npz"),
    )
    rows = read_csv(tmp_path / "strict.csv")
    assert strict["hard"] == len(rows) == len(escalated) > 0
    assert [int(r["row"]) for r in rows] == escalated
    for r in rows:
        d = decided[int(r["row"])]
        assert (r["exit"], r["predicted"]) == (d["exit"], test.classes[d["class_index"]])
        assert r["label"] == test.classes[test.labels[int(r["row"])]]
    kept = load_mvmc(tmp_path / "strict.npz")
    assert np.array_equal(kept.x, test.x[escalated])
    assert np.array_equal(kept.view_labels, test.view_labels[escalated])

    ddnn_json("hard", "--model", str(tiny), "--part", "test", "--out", str(tmp_path / "d.npz"))
    loose = read_csv(tmp_path / "d.csv")
    assert {int(r["row"]) for r in loose} >= set(escalated)
    for r in loose:
        if r["exit"] == "local":
            assert r["reasons"] == "unsure" and float(r["entropy"]) > DEFAULT_ENTROPY


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
