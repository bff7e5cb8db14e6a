"""The issue's bars, checked at full size: the default synthetic set, the default config,
the real `ddnn` commands. Takes a few minutes; the figures are printed by the commands too
(`ddnn train`, `ddnn eval --each-missing`, `ddnn baseline`)."""

from __future__ import annotations

import pytest

from tests.helpers import ddnn_json


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> dict:
    model = tmp_path_factory.mktemp("bars") / "model.pt"
    # Generous time-outs: this is a check of accuracy, not of speed (`train_seconds` is
    # printed; the 3-minute training target is met with room on 2 idle cores).
    train = ddnn_json("train", "--out", str(model), timeout=1500)
    report = ddnn_json("eval", "--model", str(model), "--each-missing")
    baseline = ddnn_json("baseline", timeout=1500)
    print(train["train_seconds"], report, baseline)
    return {"train": train, "eval": report, "baseline": baseline}


def test_individual_devices_are_weak_and_unequal(default_run):
    individual = default_run["baseline"]["individual"]
    assert all(35 <= a <= 80 for a in individual), individual
    assert max(individual) - min(individual) >= 10, individual


def test_cloud_exit_beats_the_mean_individual_device_by_20_points(default_run):
    cloud = default_run["eval"]["accuracy"]["cloud"]
    assert cloud >= default_run["baseline"]["mean"] + 20


def test_operating_point_keeps_cloud_accuracy_at_a_fraction_of_the_bytes(default_run):
    report = default_run["eval"]
    assert report["accuracy"]["overall"] >= report["accuracy"]["cloud"] - 1
    assert report["exit_fraction"]["local"] >= 50
    b = report["bytes_per_device"]
    assert b["measured"] * 40 <= b["raw"]
    assert b["measured"] == pytest.approx(b["formula"])


def test_any_single_device_missing_costs_at_most_5_points(default_run):
    report = default_run["eval"]
    for row in report["each_missing"]:
        assert row["overall"] >= report["accuracy"]["overall"] - 5, row


def test_live_single_device_failures_cost_at_most_5_points(default_run):
    """Issue 4's bar on the default (dropout-trained) model: each device killed in the live
    system; decisions equal offline evaluation without that device, which loses at most 5
    points on the whole test part."""
    (result,) = ddnn_json(
        "faults", "--model", default_run["train"]["model"], "--scenario", "device-down",
        timeout=900,
    )["results"]  # fmt: skip
    for row in result["rows"][1:]:
        assert row["lost"] == 0 and row["mismatches"] == 0, row
        assert row["cost"] <= 5, row
