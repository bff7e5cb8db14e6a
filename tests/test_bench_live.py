"""`ddnn bench live`: one run, one broker, the bare message pattern against the live system.

Speed is a benchmark's figure, never a test's assertion (it flakes on shared machines); what
is asserted here is what makes the figures mean something: every part ran and decided
every sample, the live decisions equal the offline ones, exactly once, and the pattern the
ceiling comes from has the live system's shape (the same messages per sample).
"""

from __future__ import annotations

import pytest

from ddnn.live.broker.start import find_mosquitto
from tests.helpers import ddnn_json

KINDS = ["mosquitto", "rumqttd", "amqtt"]


@pytest.mark.slow  # a minute each, most of it starting processes: the slow run has them
@pytest.mark.parametrize("kind", KINDS)
def test_bench_live_measures_the_pattern_and_the_live_system_in_one_run(tiny, kind):
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    r = ddnn_json(
        "bench", "live", "--model", str(tiny), "--samples", "60", "--seconds", "2",
        "--fps", "20", "--kind", kind, timeout=600,
    )  # fmt: skip
    assert r["broker"]["kind"] == kind
    ceiling, flat, paced = r["ceiling"], r["flat_out"], r["paced"]
    assert ceiling["decided"] == ceiling["samples"] == 30 + 40 + 60  # warm-up, paced, flat
    assert ceiling["samples_per_second"] > 0 and flat["samples_per_second"] > 0
    assert flat["decided"] == 60
    assert flat["of_ceiling"] == pytest.approx(
        flat["samples_per_second"] / ceiling["samples_per_second"], abs=0.01
    )
    # paced twice: the devices free-running on the wall clock, then started by ticks
    for run, clock in ((paced, "wall"), (r["paced_ticked"], "tick")):
        assert run["clock"] == clock and run["fps"] == 20
        assert run["samples"] == run["decided"] == 40 and run["degraded"] == 0
        # the tiny model's thresholds send samples to both exits; latency is per exit tier
        assert set(run["latency_ms"]) == {"local", "cloud"}
        for tier in run["latency_ms"].values():
            assert 0 < tier["p50"] <= tier["p99"]
    roles = {f"device-{i}" for i in range(6)} | {"aggregator", "cloud"}
    assert roles <= set(flat["cpu_seconds_per_sample"])
    # every kind of broker runs in its own process, so its CPU is measured too
    assert flat["cpu_seconds_per_sample"]["broker"] > 0
    assert roles <= set(ceiling["cpu_seconds_per_sample"])
    # The pattern sends what the live system sends for the same samples: ticks, scores,
    # offload requests, feature maps, cloud scores and decisions (statuses aside).
    assert r["messages_per_sample"] == pytest.approx(ceiling["messages_per_sample"], abs=0.3)
    parity = r["parity"]  # over every live decision: warm-up, both paced runs, flat out
    assert parity["compared"] == 30 + 40 + 40 + 60 and parity["mismatches"] == 0
    assert parity["decided_twice"] == parity["undecided"] == parity["missing"] == 0
