"""`ddnn report`: the papers' tables and figures reproduced on our data, over seeds, beside
the papers' own numbers, as report.md, a self-contained report.html, one PNG per figure
and results.json (ddnn/ops/report/build.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddnn.cli.app import app
from ddnn.cli.options import DataSpec, Grid, JsonFlag, load_data, parse_ints
from ddnn.cli.render import err, progress_bar, show
from ddnn.core.errors import DDNNError
from ddnn.core.files import make_folder
from ddnn.ops.report.build import build_report, write_report
from ddnn.ops.report.plan import FULL_EPOCHS, Plan


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="directory to write the report into")],
    data: DataSpec = "synth",
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="one seed, 3 epochs, fewer rows: the whole report in minutes (CI)"
        ),
    ] = False,
    seeds: Annotated[str, typer.Option(help="training seeds, e.g. 0,1,2")] = "0,1,2",
    epochs: Annotated[
        int | None, typer.Option(min=1, help="epochs of every training run (20; --quick: 3)")
    ] = None,
    table1_filters: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="filters per device in Table I's models (default: the paper's, 16; `ddnn "
            "train`'s default is 4)",
        ),
    ] = None,
    live: Annotated[
        Path | None, typer.Option("--live", help="a saved `ddnn bench live --json` output")
    ] = None,
    faults: Annotated[
        Path | None, typer.Option("--faults", help="a saved `ddnn faults --json` output")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="where trained models are kept between runs (default: OUT/cache)"),
    ] = None,
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """The DDNN paper's Tables I-II and Figs. 8-10 with the bytes-accuracy trade-off, the
    hybrid-precision paper's strategies, exits and energy, the exit-placement paper's placement
    and drop threshold, the learned-router paper's router: every model trained here (or found in
    the cache, by config and seed), mean and spread over the seeds, each table beside the paper's
    own numbers. About 10 minutes per seed on 2 idle cores (--quick: 2); on a busy machine set
    OMP_NUM_THREADS=1."""
    chosen = tuple(parse_ints(seeds, "--seeds"))
    if not chosen:
        raise DDNNError("--seeds needs at least one seed")
    rest = {} if table1_filters is None else {"table1_filters": table1_filters}
    plan = (
        Plan.quick_plan(chosen, epochs, **rest)
        if quick
        else Plan(chosen, epochs or FULL_EPOCHS, **rest)
    )
    make_folder(out, "report folder")  # before the runs that fill it, not after
    cache = make_folder(cache or out / "cache", "cache folder")
    dataset = load_data(data, grid, False)
    results = build_report(
        dataset,
        data,
        grid,
        plan,
        cache,
        lambda name, total: progress_bar(name, total, False),
        lambda line: err.print(line, soft_wrap=True),
        live=live,
        faults=faults,
    )
    written = write_report(results, out)
    show(
        results,
        as_json,
        [
            f"wrote {len(written)} files to {out}: {', '.join(p.name for p in written.values())}",
            f"{results['runs']['trained']} runs trained, {results['runs']['found']} found in "
            f"the cache, in {results['seconds']:.0f} s",
            "not in this report:",
            *(f"  - {m}" for m in results["missing"]),
        ],
    )
