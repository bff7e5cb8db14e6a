"""`ddnn compare strategies`, `exits` and `precision` (the hybrid-precision paper's Tables II and
IV, hybrid precision) on a small MVMC-format file: every row trained, calibrated and measured; bad
requests refused."""

from __future__ import annotations

import pytest

from ddnn.core.config import load_config
from ddnn.core.errors import DDNNError
from ddnn.data import load_spec, split
from ddnn.nn.studies.compare import (
    exit_count_candidates,
    measure,
    precision_candidates,
    strategy_candidates,
)
from ddnn.nn.train import adapt_config
from tests.helpers import ddnn, ddnn_json


def test_compare_strategies_trains_each_and_reports_exits_accuracy_and_energy(mvmc_file):
    document = ddnn_json(
        "compare", "strategies", "--data", f"mvmc:{mvmc_file}", "--epochs", "1",
        "--strategies", "separate,joint,layerwise",
    )  # fmt: skip
    rows = document["rows"]
    assert [r["strategy"] for r in rows] == ["separate", "joint", "layerwise"]
    for row in rows:
        assert 0 <= row["local_exit"] <= 100 and 0 <= row["accuracy"] <= 100
        assert row["energy_uj"] > 0 and set(row["thresholds"]) == {"local"}
    assert document["paper"]["joint"] == {"early_exit": 52.8, "accuracy": 89.16}


def test_one_and_two_early_exits_and_precisions_are_measured_alike(mvmc_file):
    """In process (the CLI's parsing of these two commands is in the next test): the rows
    of `ddnn compare exits` and `ddnn compare precision`."""
    data = load_spec(f"mvmc:{mvmc_file}")
    cfg = adapt_config(load_config(None, ["train.epochs=1"]), data)
    parts = split(data, cfg.train)
    groups = [[0, 1, 2], [3, 4, 5]]
    one, two = (measure(c, parts, None) for c in exit_count_candidates(cfg, groups))
    assert one["early_exits"] == 1 and "edge_exit" not in one
    assert two["early_exits"] == 2 and set(two["thresholds"]) == {"local", "edge"}
    assert 0 <= one["local_exit"] <= 100 and two["local_exit"] + two["edge_exit"] <= 100
    variants = [{"cloud": "float"}, {"device": "2bit", "cloud": "4bit"}]
    binary, hybrid, kbit = (measure(c, parts, None) for c in precision_candidates(cfg, variants))
    assert binary["precision"] == "as configured" and hybrid["precision"] == "cloud=float"
    assert kbit["precision"] == "device=2bit,cloud=4bit"
    # 32-bit MACs in the float cloud; bit-serial k-bit products
    assert hybrid["energy_reduction"] < binary["energy_reduction"]
    assert kbit["energy_reduction"] < binary["energy_reduction"]


def test_bad_comparisons_are_refused_by_name(mvmc_file):
    cfg = load_config()
    with pytest.raises(DDNNError, match="strategies must be some of"):
        strategy_candidates(cfg, ["joint", "greedy"], 0.6)
    with pytest.raises(DDNNError, match="between 0 and 1"):
        strategy_candidates(cfg, ["joint"], 1.5)
    with pytest.raises(DDNNError, match=r"must be some of \['device', 'cloud'\], got \['edge'\]"):
        precision_candidates(cfg, [{"edge": "float"}])
    with pytest.raises(DDNNError, match="needs a local exit and a cloud"):
        exit_count_candidates(load_config(None, ["model.cloud=null"]), None)
    weights = strategy_candidates(cfg, ["joint"], 0.6)[0].config.train.exit_weights
    assert weights == pytest.approx({"local": 0.6, "cloud": 0.4})
    bad = ("compare", "exits", "--data", f"mvmc:{mvmc_file}", "--groups", "[[0,1],[9]]")
    result = ddnn(*bad, check=False)
    assert result.returncode != 0 and "edge.groups must cover devices" in result.stderr
    assert "Traceback" not in result.stderr
    bad = ("compare", "precision", "--data", f"mvmc:{mvmc_file}", "--rule", "cheapest")
    result = ddnn(*bad, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "rule must be one of share, max_loss, best, got 'cheapest'" in result.stderr


def test_every_row_is_calibrated_by_max_loss_unless_a_rule_is_named():
    """max_loss by default, whatever the config says (the hybrid-precision paper's question: the
    least communication at equal accuracy); a named rule, for every row of every comparison."""
    cfg = load_config(None, ["calibration.rule=best"])
    for rule, expected in ((None, "max_loss"), ("share", "share"), ("best", "best")):
        named = {} if rule is None else {"rule": rule}
        candidates = [
            *strategy_candidates(cfg, ["separate", "joint"], 0.6, **named),
            *exit_count_candidates(cfg, None, **named),
            *precision_candidates(cfg, [{"cloud": "float"}], **named),
        ]
        assert len(candidates) == 6
        assert {c.config.calibration.rule for c in candidates} == {expected}, rule
    result = ddnn("compare", "precision", "--variant", "cloud=8bit", check=False)
    assert result.returncode != 0 and "--variant takes tier=precision pairs" in result.stderr
