"""Evaluation: exit accounting, communication (formula vs measured), calibration, sweeps."""

import numpy as np
import pytest
import torch

from ddnn.core.config import CalibrationSpec, load_config
from ddnn.core.exits import ExitInputs, ExitPoint, exit_points, get_policy
from ddnn.core.payloads import pack_bits, pack_scores, unpack_bits
from ddnn.data import from_mvmc_arrays
from ddnn.nn.calibration import (
    calibrated,
    local_fraction_for_budget,
    pick_by_share,
    pick_thresholds,
    thresholds_for_fractions,
)
from ddnn.nn.evaluate import (
    ExitOutputs,
    communication,
    evaluate,
    presence_mask,
    run_model,
    sweep,
    with_thresholds,
)
from ddnn.nn.model import DDNN
from tests.helpers import make_mvmc_arrays


def synthetic_outputs(n: int = 200, seed: int = 0) -> ExitOutputs:
    """Exit outputs whose local exit is right when confident and the cloud is always right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    confident = rng.random(n) < 0.6
    local = np.full((n, 3), 1 / 3)
    local[confident] = 0.02
    local[confident, labels[confident]] = 0.96
    cloud = np.full((n, 3), 0.1)
    cloud[np.arange(n), labels] = 0.8
    return ExitOutputs(
        inputs={"local": ExitInputs(np.log(local)), "cloud": ExitInputs(np.log(cloud))},
        labels=labels,
        present=np.ones((n, 6), dtype=bool),
        score_bytes=12,
        feature_bytes=128,
        feature_bits=1024,
        raw_bytes=3072,
        n_classes=3,
    )


def entropy_points(t: float = 0.5) -> list[ExitPoint]:
    e = get_policy("entropy")
    return [ExitPoint("local", e, t), ExitPoint("cloud", e, 0.0)]


def test_packed_payload_sizes_are_what_formula_1_assumes():
    scores = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    assert len(pack_scores(scores)) == 4 * 3
    assert np.array_equal(np.frombuffer(pack_scores(scores), "<f4"), scores)
    features = np.where(np.random.default_rng(0).random((4, 16, 16)) < 0.5, -1.0, 1.0)
    assert len(pack_bits(features)) == 4 * 16 * 16 // 8 == 128
    assert np.array_equal(unpack_bits(pack_bits(features), (4, 16, 16)), features)


@pytest.mark.parametrize("local_exits", [0, 61, 100])
def test_formula_and_measured_bytes_agree_for_the_papers_device(local_exits):
    """Table II: 140 B when nothing exits locally, 12 B when everything does."""
    n = 100
    out = synthetic_outputs(n)
    exit_index = np.array([0] * local_exits + [1] * (n - local_exits))
    b = communication(out, exit_index, ["local", "cloud"])
    assert b["formula"] == pytest.approx(12 + (1 - local_exits / 100) * 128)
    assert b["measured"] == pytest.approx(b["formula"])
    assert b["raw"] == 3072
    if local_exits == 0:
        assert b["measured"] == 140


def test_measured_bytes_count_only_present_devices():
    out = synthetic_outputs(4)
    out.present[:, 3:] = False
    b = communication(out, np.array([0, 0, 1, 1]), ["local", "cloud"])
    assert b["measured"] == pytest.approx(12 + 0.5 * 128)


def test_run_model_payload_sizes_match_the_model():
    data = from_mvmc_arrays(*make_mvmc_arrays(8), name="t")
    out = run_model(DDNN(load_config().model), data)
    assert (out.score_bytes, out.feature_bytes, out.feature_bits, out.raw_bytes) == (
        12,
        128,
        1024,
        3072,
    )
    for probs in out.probs.values():
        assert np.allclose(probs.sum(axis=1), 1.0)


def test_evaluate_reports_every_tier_with_nulls_for_absent_ones():
    report = evaluate(synthetic_outputs(), entropy_points(0.5))
    assert report["accuracy"]["edge"] is None and report["exit_fraction"]["edge"] is None
    assert report["accuracy"]["cloud"] == 100.0
    assert report["exit_fraction"]["local"] + report["exit_fraction"]["cloud"] == pytest.approx(100)
    assert report["accuracy"]["overall"] == 100.0  # confident local answers are right
    assert report["threshold"] == {"local": 0.5}


def test_sweep_covers_table_ii_endpoints():
    rows = sweep(synthetic_outputs(), entropy_points())
    assert [r["threshold"] for r in rows] == [round(0.1 * i, 1) for i in range(11)]
    assert rows[0]["exit_fraction"] == 0.0 and rows[0]["bytes_measured"] == 140
    assert rows[-1]["exit_fraction"] == 100.0 and rows[-1]["bytes_measured"] == 12


def test_thresholds_for_target_exit_fraction_hit_the_target():
    out = synthetic_outputs(300, seed=1)
    rng = np.random.default_rng(2)
    out.inputs["local"] = ExitInputs(rng.normal(size=(300, 3)) * 3)
    for target in (0.0, 0.25, 0.6, 1.0):
        t = thresholds_for_fractions(out, entropy_points(), {"local": target})["local"]
        report = evaluate(out, [ExitPoint("local", get_policy("entropy"), t), entropy_points()[1]])
        assert report["exit_fraction"]["local"] == pytest.approx(100 * target, abs=0.5)
    with pytest.raises(ValueError, match="cannot exit"):
        thresholds_for_fractions(out, entropy_points(), {"local": 1.5})


def test_bytes_budget_turns_into_a_local_exit_fraction():
    out = synthetic_outputs()
    assert local_fraction_for_budget(out, 62) == pytest.approx(1 - 50 / 128)
    assert local_fraction_for_budget(out, 500) == 0.0
    with pytest.raises(ValueError, match="below the 12 B"):
        local_fraction_for_budget(out, 5)


def test_pick_thresholds_prefers_cheap_settings_within_the_accuracy_loss():
    out = synthetic_outputs()
    picked = pick_thresholds(out, entropy_points(), rule="max_loss", max_loss=0.5)
    report = evaluate(out, entropy_points(picked["local"]))
    # every confident local answer is right: the cheapest lossless T exits all 60 % of them
    assert report["accuracy"]["overall"] == 100.0
    assert report["exit_fraction"]["local"] == pytest.approx(
        100 * (out.probs["local"].max(1) > 0.5).mean()
    )


def test_the_share_rule_exits_its_share_unless_the_samples_show_it_costs_too_much():
    """Rule "share" (the default): 60 % of the samples leave locally where that costs
    nothing; where the local exit is wrong when confident, the samples are evidence against
    it and rule "max_loss" decides instead (which keeps every sample going up)."""
    out = synthetic_outputs(400, seed=3)
    points = entropy_points()
    spec = CalibrationSpec()
    assert spec.rule == "share" and spec.shares == {"local": 0.6}
    picked = calibrated(out, points, spec)
    report = evaluate(out, entropy_points(picked["local"]))
    assert report["exit_fraction"]["local"] == pytest.approx(60, abs=0.5)
    assert picked == pick_by_share(out, points, {"local": 0.6})
    assert pick_by_share(out, points, {"edge": 0.5}) == pick_thresholds(out, points)  # no edge
    wrong = synthetic_outputs(400, seed=3)
    probs = wrong.probs["local"]
    liar = np.roll(probs, 1, axis=1)  # confident and wrong: every confident answer moves class
    wrong.inputs["local"] = ExitInputs(np.log(liar))
    fallback = calibrated(wrong, points, spec)
    assert fallback == pick_thresholds(wrong, points, "max_loss")
    assert evaluate(wrong, entropy_points(fallback["local"]))["accuracy"]["overall"] == 100.0


def test_a_share_on_a_weak_local_exit_above_an_edge_falls_back_to_max_loss():
    """With an edge between, rule "share" fixes the local threshold and searches the edge's;
    when the local share alone already loses over `max_loss` points, no edge threshold is
    within it: the whole search of rule "max_loss" decides (it crashed on an empty pick)."""
    out = synthetic_outputs(400, seed=3)
    out.inputs["local"] = ExitInputs(np.log(np.roll(out.probs["local"], 1, axis=1)))  # a liar
    out.inputs["edge"] = out.inputs["cloud"]
    e = get_policy("entropy")
    points = [ExitPoint("local", e, 0.5), ExitPoint("edge", e, 0.5), ExitPoint("cloud", e, 0.0)]
    picked = calibrated(out, points, CalibrationSpec())
    assert picked == pick_thresholds(out, points, "max_loss")
    assert evaluate(out, with_thresholds(points, picked))["accuracy"]["overall"] == 100.0


def test_presence_mask_rejects_unknown_devices_and_all_missing():
    assert presence_mask(2, 3, [1]).tolist() == [[True, False, True]] * 2
    with pytest.raises(ValueError, match="device 7 does not exist"):
        presence_mask(2, 3, [7])
    with pytest.raises(ValueError, match="at least one device"):
        presence_mask(2, 3, [0, 1, 2])


def test_missing_devices_change_the_evaluation_of_a_real_model():
    data = from_mvmc_arrays(*make_mvmc_arrays(16), name="t")
    torch.manual_seed(0)
    model = DDNN(load_config().model)
    points = exit_points(load_config(), model.exits)
    full = run_model(model, data)
    partial = run_model(model, data, presence_mask(len(data), 6, [0, 1, 2]))
    assert not np.allclose(full.probs["cloud"], partial.probs["cloud"])
    assert evaluate(partial, points)["present_devices"] == [3, 4, 5]


def test_a_drop_threshold_reports_coverage_and_the_accuracy_of_what_was_answered():
    """The unconfident 40 % (uniform local probabilities, entropy 1) abstain at the local
    exit under a drop of 0.99: coverage 60 %, every answer right, no feature bytes for them."""
    out = synthetic_outputs()
    e = get_policy("entropy")
    points = [ExitPoint("local", e, 0.5, drop=0.99), ExitPoint("cloud", e, 0.0)]
    report = evaluate(out, points)
    confident = report["exit_fraction"]["local"]
    assert report["abstained"]["local"] == pytest.approx(100 - confident)
    assert report["exit_fraction"]["cloud"] == 0.0
    assert report["coverage"] == {"answered": confident, "accuracy": 100.0}
    assert report["accuracy"]["overall"] == confident  # an abstention is not a right answer
    assert report["bytes_per_device"]["measured"] == 12  # nothing went up
    assert report["drop"] == {"local": 0.99}
