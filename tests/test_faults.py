"""The fault-injection suite: every scenario of `ddnn faults` on a real broker and real
processes, held to the design's promises (no sample lost or decided twice, no crash from bad
input, every live decision equal to offline evaluation with the same devices present)."""

from __future__ import annotations

from pathlib import Path

from ddnn.data import save_mvmc
from tests.helpers import ddnn_json, make_mvmc_arrays, tiny_model


def faults(model: Path, *scenarios: str, **options: str) -> list[dict]:
    args = ["faults", "--model", str(model)]
    for s in scenarios:
        args += ["--scenario", s]
    for k, v in options.items():
        args += [f"--{k.replace('_', '-')}", v]
    return ddnn_json(*args, timeout=900)["results"]


def assert_sound(result: dict) -> None:
    """What every scenario must show."""
    for row in result["rows"]:
        assert row["lost"] == 0, row
        assert row["decided"] + row["undecided"] == row["samples"], row
        assert row["mismatches"] == 0, row
        assert row["compared"] > 0, row
    assert all(result["alive"].values()), result["alive"]
    assert not {"decided_twice", "stalled"} & set(result["anomalies"]), result["anomalies"]


def test_each_single_device_killed(tiny):
    (result,) = faults(tiny, "device-down")
    assert_sound(result)
    killed = result["rows"][1:]
    assert len(killed) == 6
    for row in killed:
        assert row["undecided"] == 0
        assert row["detect_s"] is not None and row["detect_s"] < 2.0  # by the last will
        # after detection the aggregator stops waiting for the dead device
        assert row["local_p50_after_ms"] < 0.5 * 1000, row


def test_devices_killed_until_one_is_left(tiny):
    (result,) = faults(tiny, "attrition")
    assert_sound(result)
    assert [r["scenario"] for r in result["rows"]] == [f"{n} devices" for n in range(6, 0, -1)]


def test_a_straggler_s_late_scores_are_counted_and_dropped(tiny):
    (result,) = faults(tiny, "straggler")
    assert_sound(result)
    assert result["counters"]["aggregator"].get("late", 0) > 0


def test_a_flapping_device(tiny):
    (result,) = faults(tiny, "flapping")
    assert_sound(result)
    assert result["restarts"] == {"device-1": 3}


def test_broker_restart(tiny):
    (result,) = faults(tiny, "broker-restart")
    assert_sound(result)
    (row,) = result["rows"]
    assert row["undecided"] == 0
    assert row["recovery_s"] is not None and row["recovery_s"] < 15


def test_aggregator_and_cloud_restarts(tiny):
    (result,) = faults(tiny, "service-restart")
    assert_sound(result)
    assert [r["scenario"] for r in result["rows"]] == [
        "aggregator killed and restarted",
        "cloud killed and restarted",
    ]
    assert all(r["recovery_s"] is not None for r in result["rows"])


def test_bad_input_on_every_topic_is_counted_with_its_reason(tiny):
    (result,) = faults(tiny, "bad-input")
    assert_sound(result)
    assert result["rows"][0]["undecided"] == 0
    rejected = result["rejected"]
    aggregator = " | ".join(rejected["aggregator"])
    for reason in (
        "not msgpack",
        "msgpack map",
        "schema version 9",
        "NaN or infinite",
        "not a whole number of float32",
        "exceeds",
        "the model has 3 classes",
        "which no tick started",
        "from device-77",
        "a tick message on",
    ):
        assert reason in aggregator, reason
    assert any("shape [4, 8, 8]" in r for r in rejected["cloud"])
    for role in [f"device-{i}" for i in range(6)]:
        assert any("not msgpack" in r for r in rejected[role]), role


def test_dropout_trained_and_untrained_models_side_by_side(tiny, tmp_path):
    plain = tiny_model(tmp_path, "p", "0.5", "--set", "train.device_dropout=0")
    results = faults(tiny, "dropout", compare_model=str(plain))
    assert [r["scenario"] for r in results] == ["dropout: with dropout", "dropout: without dropout"]
    for result in results:
        assert_sound(result)


def test_faults_replay_the_data_asked_for_and_check_against_the_same(tmp_path):
    """A model trained on one MVMC-format file, faults run with `--data` another: the
    devices replay that file's test part, and the offline reference decides the same."""
    trained_on, other = tmp_path / "a.npz", tmp_path / "b.npz"
    save_mvmc(trained_on, *make_mvmc_arrays(200, seed=2))
    save_mvmc(other, *make_mvmc_arrays(100, seed=3))
    model = tiny_model(tmp_path, "m", "0.5", "--data", f"mvmc:{trained_on}")
    (result,) = faults(model, "bad-input", data=f"mvmc:{other}")
    assert result["data"] == f"mvmc:{other}"
    assert_sound(result)  # every compared live decision equals the offline one on b.npz
