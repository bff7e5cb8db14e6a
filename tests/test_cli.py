"""The `ddnn` command end to end, in real subprocesses, on small data files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddnn.data import save_mvmc, synthetic_cache_path
from tests.helpers import ddnn, ddnn_json, make_mvmc_arrays


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "d.npz"
    save_mvmc(data, *make_mvmc_arrays(200))
    model = tmp / "m.pt"
    ddnn_json("train", "--data", f"mvmc:{data}", "--out", str(model), "--epochs", "8")
    return data, model


def test_train_writes_a_model_and_reports_the_test_split(trained):
    data, model = trained
    assert model.exists()
    report = ddnn_json("eval", "--model", str(model))
    assert set(report["accuracy"]) == {"local", "edge", "cloud", "overall"}
    assert report["accuracy"]["edge"] is None
    assert report["accuracy"]["cloud"] > 70
    assert set(report["exit_fraction"]) >= {"local", "edge", "cloud"}
    assert set(report["bytes_per_device"]) >= {"formula", "measured", "raw"}
    assert report["bytes_per_device"]["raw"] == 3072
    assert report["samples"] == 40 and "local" in report["threshold"]


def test_eval_threshold_and_missing_devices(trained):
    _, model = trained
    none_local = ddnn_json("eval", "--model", str(model), "--threshold", "0")
    assert none_local["exit_fraction"]["local"] == 0.0
    assert none_local["bytes_per_device"]["measured"] == 140.0
    all_local = ddnn_json("eval", "--model", str(model), "--threshold", "local=1")
    assert all_local["exit_fraction"]["local"] == 100.0
    assert all_local["bytes_per_device"]["measured"] == 12.0
    # energy per sample (ddnn/core/energy.py): every sample pays the devices and the local
    # exit; only those that go on pay the cloud
    every, none = none_local["energy_uj"], all_local["energy_uj"]
    assert every["local"] == none["local"] > 0 and none["cloud"] == 0 < every["cloud"]
    for e in (every, none):
        assert e["total"] == pytest.approx(e["local"] + e["edge"] + e["cloud"], abs=1e-3)
        assert e["float_reference"] > e["total"] and e["edge"] == 0
    missing = ddnn_json("eval", "--model", str(model), "--missing", "0,3", "--each-missing")
    assert missing["present_devices"] == [1, 2, 4, 5] and missing["missing"] == [0, 3]
    assert [row["missing"] for row in missing["each_missing"]] == list(range(6))
    assert all(0 <= row["seen_alone"] < 50 for row in missing["each_missing"])


def test_eval_scaling_adds_devices_one_by_one(trained):
    _, model = trained
    report = ddnn_json("eval", "--model", str(model), "--scaling", "--order", "5,4,3,2,1,0")
    assert [row["devices"] for row in report["scaling"]][:2] == [[5], [5, 4]]
    assert len(report["scaling"]) == 6


def test_sweep_gives_table_ii_rows_and_a_pick(trained):
    _, model = trained
    doc = ddnn_json("sweep", "--model", str(model))
    assert len(doc["rows"]) == 11 and doc["exit"] == "local"
    assert doc["rows"][0]["bytes_measured"] == 140.0 and doc["rows"][-1]["bytes_measured"] == 12.0
    assert doc["picked"] in doc["rows"]


def test_calibrate_for_an_exit_fraction_and_a_budget(trained, tmp_path):
    _, model = trained
    copy = tmp_path / "m.pt"
    copy.write_bytes(model.read_bytes())
    doc = ddnn_json("calibrate", "--model", str(copy), "--exit-fraction", "0.5")
    assert doc["validation"]["exit_fraction"]["local"] == pytest.approx(50, abs=4)
    stored = ddnn_json("eval", "--model", str(copy), "--part", "validation")
    assert stored["threshold"]["local"] == pytest.approx(doc["thresholds"]["local"])
    doc = ddnn_json("calibrate", "--model", str(copy), "--budget", "76", "--no-write")
    assert doc["validation"]["bytes_per_device"]["measured"] <= 76 + 128 / 24  # one sample


def test_baseline_trains_each_device_alone(trained):
    data, _ = trained
    doc = ddnn_json("baseline", "--data", f"mvmc:{data}", "--epochs", "2")
    assert len(doc["individual"]) == 6
    assert all(0 <= a <= 100 for a in doc["individual"])


def test_tiles_data_spec_trains(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    x = rng.uniform(0, 100, (120, 16, 24)).astype(np.float32)
    x[y == 1, :, :4] = 255
    np.savez(tmp_path / "img.npz", X=x, y=y)
    doc = ddnn_json(
        "train",
        "--data",
        f"tiles:{tmp_path / 'img.npz'}",
        "--grid",
        "2x3",
        "--out",
        str(tmp_path / "t.pt"),
        "--epochs",
        "2",
    )
    assert doc["test"]["bytes_per_device"]["raw"] == 8 * 8


def test_a_config_is_checked_against_the_devices_of_its_data(tmp_path):
    """Edge groups name the data's devices (nine on a 3x3 grid), not the default six: the
    config is fitted to the data before it is checked, and a misfit names both."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    x = rng.uniform(0, 100, (60, 24, 24)).astype(np.float32)
    x[y == 1, :8, :8] = 255
    images = f"tiles:{tmp_path / 'img.npz'}"
    np.savez(tmp_path / "img.npz", X=x, y=y)
    nine = "model.edge={groups: [[0,1,2],[3,4,5],[6,7,8]]}"
    model = str(tmp_path / "e.pt")
    ddnn_json("train", "--data", images, "--grid", "3x3", "--set", nine, "--out", model,
              "--epochs", "1")  # fmt: skip
    evaluated = ddnn_json("eval", "--model", model)
    assert set(evaluated["accuracy"]) >= {"local", "edge", "cloud"}
    assert evaluated["present_devices"] == list(range(9))
    proc = ddnn("train", "--data", images, "--grid", "2x2", "--set", nine, "--out", model,
                check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "edge.groups must cover devices 0..3" in proc.stderr and "4 views" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_data_file_is_a_one_line_error(tmp_path):
    proc = ddnn("train", "--data", f"mvmc:{tmp_path / 'nope.npz'}", check=False)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_data_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((3, 6, 3, 32, 32), np.float32), y=np.zeros((3, 4), np.int32))
    proc = ddnn("train", "--data", f"mvmc:{bad}", check=False)
    assert proc.returncode == 2 and "y must be (N, views)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_training_on_one_class_is_a_one_line_error(tmp_path):
    """It trained without a word: a model that answers "bus" for everything, perfect on its
    own data. Evaluating on such a file stays allowed (tiles refuse class 0 alone at load:
    they take their class list from the labels)."""
    x, y = make_mvmc_arrays(20)
    y[y != 3] = 1  # every camera that sees an object sees a bus
    save_mvmc(tmp_path / "bus.npz", x, y)
    proc = ddnn("train", "--data", f"mvmc:{tmp_path / 'bus.npz'}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "bus.npz: every training sample is of class bus" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_is_a_one_line_error(tmp_path, trained):
    data, _ = trained
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: zero\n")
    proc = ddnn("train", "--data", f"mvmc:{data}", "--config", str(cfg), check=False)
    assert proc.returncode == 2 and "train.epochs" in proc.stderr
    proc = ddnn(
        "train", "--data", f"mvmc:{data}", "--set", "model.cloud.aggregation=SUM", check=False
    )
    assert proc.returncode == 2 and "model.cloud.aggregation" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_model_file_and_mismatched_data_are_one_line_errors(tmp_path, trained):
    data, model = trained
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    proc = ddnn("eval", "--model", str(junk), check=False)
    assert proc.returncode == 2 and "not a readable DDNN model file" in proc.stderr
    other = tmp_path / "five.npz"
    x, y = make_mvmc_arrays(20)
    save_mvmc(other, x[:, :5], y[:, :5])
    proc = ddnn("eval", "--model", str(model), "--data", f"mvmc:{other}", check=False)
    assert proc.returncode == 2 and "does not fit the model" in proc.stderr
    proc = ddnn("eval", "--model", str(model), "--missing", "9", check=False)
    assert proc.returncode == 2 and "device 9 does not exist" in proc.stderr


def test_help_explains_every_command():
    top = ddnn("--help").stdout
    for command in ("train", "eval", "sweep", "calibrate", "baseline", "data", "config"):
        assert command in top
    assert "--missing" in ddnn("eval", "--help").stdout


def test_data_synth_writes_the_same_file_for_the_same_seed(tmp_path):
    from ddnn.data import load_mvmc

    for name in ("a", "b"):
        ddnn(
            "data",
            "synth",
            "--out",
            str(tmp_path / f"{name}.npz"),
            "--samples",
            "12",
            "--seed",
            "2",
        )
    a, b = load_mvmc(tmp_path / "a.npz"), load_mvmc(tmp_path / "b.npz")
    assert len(a) == 12 and a.x.shape[1:] == (6, 3, 32, 32)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.view_labels, b.view_labels)


def test_json_stdout_is_one_document_also_on_first_use(tmp_path, monkeypatch):
    """With --json, stdout holds the JSON document alone: what else a command prints goes to
    stderr, the table of the demo model trained on first use (a `ddnn train` subprocess)
    included. An empty cache directory makes it a first use (the default synthetic set is
    put there small, so that the demo model trains in seconds). (Every `ddnn_json` of the
    tests checks the same of a command that is not a first use: `ddnn demo` in test_live.)"""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DDNN_DATA_DIR", str(cache))
    save_mvmc(synthetic_cache_path(), *make_mvmc_arrays(120))
    proc = ddnn("faults", "--scenario", "straggler", "--json", timeout=600)  # the case
    assert json.loads(proc.stdout)  # all of stdout, or this fails
    assert "wrote" in proc.stderr  # training's table, on stderr
    assert list((cache / "demo").glob("*.pt"))
    config = json.loads(ddnn("config", "--set", "train.epochs=7", "--json").stdout)
    assert config["train"]["epochs"] == 7
    out = str(tmp_path / "s.npz")
    synth = json.loads(ddnn("data", "synth", "--out", out, "--samples", "4", "--json").stdout)
    assert synth["samples"] == 4


def test_every_commands_help_is_reflowed_for_the_terminal():
    """Help panels wrap each paragraph to the terminal; a line break kept from a docstring
    would break a sentence mid-way there. Every command, in every group, has none left."""
    import click
    import typer

    from ddnn.cli import app

    group = typer.main.get_command(app)
    context = click.Context(group)
    for name in group.list_commands(context):  # each module, loaded as when its command runs
        assert group.get_command(context, name) is not None, name

    def helps(group):
        for command in group.registered_commands:
            yield command.help
        for sub in group.registered_groups:
            yield from helps(sub.typer_instance)

    texts = list(helps(app))
    assert len(texts) > 20 and all(texts)
    assert not [t for t in texts if any("\n" in p for p in t.split("\n\n"))]
