"""`ddnn bench sites`: many sites (deployments) on one broker, ticked at once.

As for every benchmark, speed is the figure it prints, not an assertion here. What is
asserted is what makes its figures mean something: every site ran with its own accounts on
the one broker, decided what it ticked exactly once and as offline evaluation does, and a
starved site would be reported as one.
"""

from __future__ import annotations

import pytest

from tests.helpers import ddnn_json


@pytest.mark.slow  # ~40 s of starting 15 processes: the slow run has it
def test_bench_sites_runs_every_site_on_one_broker_and_reports_each(tiny):
    r = ddnn_json(
        "bench", "sites", "--model", str(tiny), "--sites", "3", "--devices", "3",
        "--fps", "5", "--seconds", "4", timeout=600,
    )  # fmt: skip
    assert r["sites"] == 3 and r["devices_per_site"] == 3
    assert r["processes"] == 3 * (3 + 2)  # devices, the aggregator and the cloud, per site
    assert [s["site"] for s in r["per_site"]] == ["site-0", "site-1", "site-2"]
    for site in r["per_site"]:
        assert site["ticked"] == site["decided"] == site["compared"] == 20
        assert site["mismatches"] == 0 and site["decided_twice"] == 0
        assert site["undecided"] == 0 and site["degraded"] == 0
        assert site["decided_per_second"] > 0
        for tier in site["latency_ms"].values():
            assert 0 < tier["p50"] <= tier["p99"]
    assert r["starved"] == [s["site"] for s in r["per_site"] if s["starved"]]
    assert r["decided_per_second"] > 0 and r["cpu_seconds_per_sample"] > 0
