"""`ddnn report`: every table and figure of the DDNN paper that the project reproduces, and
the other papers' comparisons, from training runs the report starts itself (or finds in its
cache), mean and spread over seeds, each beside the paper's own numbers.

`build_report` runs the sections (ddnn_tables.py: the DDNN paper; other_papers.py: seeds
000-002; live_tables.py: the live system, from saved `--json` outputs) and returns what
results.json holds; `write_report` draws the figures (figures.py) and writes
report.md, report.html (render.py) and results.json. A section that cannot run on
the data given (too few samples for a threshold at some coverage, say) is listed under
"Not in this report" with the reason instead of ending the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddnn.core.config import load_config
from ddnn.core.errors import DDNNError
from ddnn.data import MultiViewData, Splits
from ddnn.nn.train import adapt_config
from ddnn.ops.report import ddnn_tables, figures, live_tables, other_papers, paper, render
from ddnn.ops.report.plan import Context, Plan
from ddnn.ops.report.runs import Progress, Runs

Section = Callable[[Context], dict[str, Any]]

SECTIONS: list[tuple[str, list[Section]]] = [
    (
        paper.DDNN,
        [
            ddnn_tables.table1,
            ddnn_tables.table2,
            ddnn_tables.fig8,
            ddnn_tables.fig9,
            ddnn_tables.fig10,
            ddnn_tables.tradeoff,
        ],
    ),
    (
        "Hybrid precision: conditionally deep hybrid networks across edge and cloud",
        [other_papers.strategies, other_papers.early_exits, other_papers.energy],
    ),
    ("Exit placement: analysis of local exit", [other_papers.placement, other_papers.drop]),
    ("Learned router: hybrid cloud-edge networks", [other_papers.router]),
]

LIVE = "`ddnn bench live --json` output (--live FILE)"
FAULTS = "`ddnn faults --json` output (--faults FILE)"

# What the report does not reproduce, whatever the run.
NOT_COVERED = [
    "The papers' curves (DDNN Figs. 8-10, the learned-router paper's Fig. 3) are not read off "
    "their plots: "
    "only the numbers their text or tables state stand beside ours.",
    "Fig. 9's device memory (the paper's x axis: under 2 KB per device) is not reported; "
    "its rows here go by the number of filters.",
    "The hybrid-precision paper's Table III (the edge / cloud energy split) and its accuracy "
    "at hybrid precision, the exit-placement paper's latencies (Fig. 5C) and the "
    "learned-router paper's FLOPs and latencies (Table 4) are not "
    "reproduced.",
]


def describe_data(spec: str, dataset: MultiViewData, parts: Splits) -> tuple[str, str]:
    """Our data in words: what it is and its split, and a short name for every table."""
    n_val = len(parts.validation) if parts.validation is not None else 0
    sizes = f"{len(parts.train)} train / {n_val} validation / {len(parts.test)} test"
    if spec.startswith("synth"):
        short = f"synthetic set `{spec}` (not the paper's MVMC)"
        what = f"the synthetic multi-camera set `{spec}`, {dataset.n_views} rendered cameras"
    elif spec.startswith("mvmc:"):
        short = f"MVMC-format file {Path(spec.removeprefix('mvmc:')).name}"
        what = f"the MVMC-format file {spec.removeprefix('mvmc:')}"
    else:
        short = what = f"{spec} ({dataset.n_views} views)"
    return f"{what}: {len(dataset)} samples, {sizes}", short


def build_report(
    dataset: MultiViewData,
    spec: str,
    grid: str,
    plan: Plan,
    cache: Path,
    progress: Progress,
    log: Callable[[str], None],
    live: Path | None = None,
    faults: Path | None = None,
) -> dict[str, Any]:
    """Run every section over the plan's seeds; the content of results.json."""
    start = time.perf_counter()
    given = [  # read first: a bad file should fail before the training, not after it
        (live_tables.read_json(path, what), path, summarize)
        for path, what, summarize in (
            (live, LIVE, live_tables.live_table),
            (faults, FAULTS, live_tables.faults_table),
        )
        if path is not None
    ]
    base = load_config(None, [f"train.epochs={plan.epochs}"])
    runs = Runs(dataset, spec, grid, base, cache, progress)
    base = adapt_config(base, runs.parts.train)
    ours, short = describe_data(spec, dataset, runs.parts)
    ctx = Context(runs, plan, base, dataset, short, log)
    tables: dict[str, Any] = {}
    sections, missing = [], []
    for title, parts in SECTIONS:
        ids = []
        for section in parts:
            log(f"{title}: {section.__name__}")
            try:
                t = section(ctx)
            except (DDNNError, ValueError) as e:
                missing.append(f"{title}, {section.__name__}: could not run here ({e})")
                continue
            tables[t["id"]] = t
            ids.append(t["id"])
        sections.append({"title": title, "tables": ids})
    sections.append({"title": "The live system", "tables": []})
    for document, path, summarize in given:
        t = summarize(document, path)
        tables[t["id"]] = t
        sections[-1]["tables"].append(t["id"])
    for path, what in ((live, LIVE), (faults, FAULTS)):
        if path is None:
            missing.append(f"The live system: no {what} given.")
    if plan.quick:
        missing.append(
            f"--quick: one seed, {plan.epochs} epochs per run, fewer rows (filters "
            f"{list(plan.filters)}, coverages {list(plan.coverages)}, drops "
            f"{list(plan.drops)}, placement path {list(plan.placement_path)}); run without "
            "--quick for the full report."
        )
    return {
        "title": "DDNN: our reproduction beside the papers",
        "data": {"spec": spec, "name": dataset.name, "ours": ours, "paper": paper.MVMC},
        "plan": plan.describe(),
        "sections": sections,
        "tables": tables,
        "missing": [*missing, *NOT_COVERED],
        "runs": {"trained": len(runs.trained), "found": len(runs.found), "cache": str(cache)},
        "seconds": round(time.perf_counter() - start, 1),
    }


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """The figures, report.md, report.html and results.json in `out`; what was written."""
    out.mkdir(parents=True, exist_ok=True)
    results["figures"] = figures.draw(results["tables"], out)
    written = {id: out / name for id, name in results["figures"].items()}
    for name, text in (
        ("results.json", json.dumps(results, indent=2)),
        ("report.md", render.markdown(results)),
        ("report.html", render.html_page(results, out)),
    ):
        (out / name).write_text(text)
        written[name] = out / name
    return written
