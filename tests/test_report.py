"""`ddnn report`: the papers' tables and figures from training runs the report starts (or
finds in its cache), beside the papers' numbers, as report.md, report.html with its images
inlined, one PNG per figure and results.json.

The default run builds the whole report in process on the small MVMC-format file with one
epoch per run (seconds); the slow run runs `ddnn report --quick` on the default synthetic
set as a user would, and holds its Table II to `ddnn sweep --json` on the same model."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest
import torch

from ddnn.core.config import CloudSpec, DDNNConfig
from ddnn.data import load_spec
from ddnn.nn.evaluate import load_for_eval, model_exit_points, run_model, sweep
from ddnn.ops.report.build import build_report, write_report
from ddnn.ops.report.paper import TABLE1
from ddnn.ops.report.plan import Plan
from ddnn.ops.report.runs import run_key
from tests.helpers import ddnn

PNG = b"\x89PNG\r\n\x1a\n"
SCHEMES = {f"{local}-{cloud}" for local, cloud in TABLE1}


@contextlib.contextmanager
def no_bar(description: str, total: int) -> Iterator:
    yield lambda *a, **k: None


def md_tables(text: str) -> list[list[str]]:
    """The header cells of every table in a markdown text."""
    headers, previous = [], ""
    for line in text.splitlines():
        if line.startswith("|") and not previous.startswith("|"):
            headers.append([c.strip() for c in line.strip("|").split("|")])
        previous = line
    return headers


def check_report(out: Path, min_figures: int) -> dict:
    """What every report holds, whatever it ran; returns results.json."""
    results = json.loads((out / "results.json").read_text())
    headers = md_tables((out / "report.md").read_text())
    assert len(headers) == len(results["tables"]) >= 12
    for header in headers:
        assert any(c.startswith("paper") for c in header), header
    for t in results["tables"].values():  # the paper and the data named beside each
        assert t["source"] and t["paper_data"] and t["our_data"]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= min_figures and {p.name for p in pngs} == set(results["figures"].values())
    for png in pngs:
        assert png.read_bytes().startswith(PNG)
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 100 and width > 100
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(pngs)
    assert not re.search(r"src='[^d]", page)  # every image inlined: it stands alone
    rows = results["tables"]["table1"]["rows"]
    assert len(rows) == 9 and {r["scheme"] for r in rows} == SCHEMES
    for row in rows:
        assert row["paper"] == dict(
            zip(("local %", "cloud %"), TABLE1[tuple(row["scheme"].split("-"))], strict=True)
        )
    return results


LIVE = {  # the parts of `ddnn bench live --json` the report reads
    "data": "synth",
    "window": 16,
    "broker": {"kind": "mosquitto"},
    "accuracy": 91.5,
    "parity": {"offline_accuracy": 91.5, "mismatches": 0},
    "paced": {"exit_fraction": {"local": 61.0}, "latency_ms": {"local": {"p50": 4.0}}},
    "flat_out": {"samples_per_second": 460.0, "of_ceiling": 0.5},
    "messages_per_sample": 9.2,
}
FAULTS = {  # and of `ddnn faults --json`
    "results": [
        {
            "scenario": "device-down",
            "rows": [{"scenario": "device 0 killed", "samples": 100, "decided": 100, "lost": 0}],
        }
    ]
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """PyTorch on one thread while a test trains tiny models in process: on a busy 2-core
    machine two threads spin waiting for each other (README, Results), which took this
    test from 7 s to over 100 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_report_from_one_epoch_runs_on_a_small_file(mvmc_file, tmp_path, one_thread):
    """The whole report in process: every section's runs (one epoch each), the figures,
    the tables with a paper column each, the live outputs; a second build trains nothing."""
    live, faults = tmp_path / "live.json", tmp_path / "faults.json"
    live.write_text(json.dumps(LIVE))
    faults.write_text(json.dumps(FAULTS))
    spec, cache, out = f"mvmc:{mvmc_file}", tmp_path / "cache", tmp_path / "report"
    plan = Plan.quick_plan((0, 1), epochs=1)
    args = (load_spec(spec), spec, "2x3", plan, cache, no_bar, lambda line: None)
    results = build_report(*args, live=live, faults=faults)
    assert plan.seeds == (0,) and results["runs"]["trained"] > 10 and results["runs"]["found"] == 0
    write_report(results, out)
    results = check_report(out, 8)
    assert not any("live system" in m for m in results["missing"])
    assert results["tables"]["live"]["rows"][0]["value"] == 91.5
    assert results["tables"]["faults"]["rows"][0]["stretch"] == "device 0 killed"
    table2 = results["tables"]["table2"]
    model, cfg, _, test = load_for_eval(table2["per_seed"]["0"]["model"])
    assert table2["per_seed"]["0"]["rows"] == sweep(
        run_model(model, test), model_exit_points(model, cfg)
    )
    assert [r["threshold"] for r in table2["rows"]] == [r / 10 for r in range(11)]
    again = build_report(*args)  # from the cache: same numbers, nothing trained
    assert again["runs"]["trained"] == 0 and again["runs"]["found"] >= results["runs"]["trained"]
    assert again["tables"]["table1"] == results["tables"]["table1"]


@pytest.mark.slow
def test_quick_report_as_a_user_runs_it(tmp_path, monkeypatch):
    """`ddnn report --quick --json` in its own process: the files, --json's stdout, and
    Table II's rows equal to `ddnn sweep --json` on the same cached model."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see `one_thread`; ~2 minutes on 2 cores
    out = tmp_path / "report"
    proc = ddnn("report", "--quick", "--out", str(out), "--json", timeout=900)
    results = check_report(out, 6)
    assert json.loads(proc.stdout) == results  # --json: results.json on stdout, alone
    assert results["plan"]["quick"] and results["plan"]["seeds"] == [0]
    table2 = results["tables"]["table2"]["per_seed"]["0"]
    swept = json.loads(ddnn("sweep", "--model", table2["model"], "--json").stdout)
    assert table2["rows"] == swept["rows"]


def test_a_setting_that_cannot_change_a_run_leaves_its_cache_key_alone():
    """`train.or_balance` acts on ORs only: changing it keeps the cached runs of models with
    no OR (CC at the cloud), and retrains those with one (MP over +-1 maps)."""
    cc = DDNNConfig()
    mp = cc.model_copy(
        update={"model": cc.model.model_copy(update={"cloud": CloudSpec(aggregation="MP")})}
    )
    for cfg, kept in ((cc, True), (mp, False)):
        other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"or_balance": 0})})
        assert (run_key("model", cfg, "d") == run_key("model", other, "d")) is kept
    assert run_key("model", cc, "d") != run_key("model", mp, "d")
