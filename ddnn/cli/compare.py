"""`ddnn compare strategies`, `exits` and `precision`: the hybrid-precision paper's Tables II and IV
and its hybrid precision on our data, each row a model trained as `ddnn train` does and calibrated
by rule max_loss, or the one `--rule` names (ddnn/nn/studies/compare.py); `ddnn compare placement`:
the exit-placement paper's single-exit against multi-exit models at a fixed threshold
(ddnn/nn/studies/placement.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, get_args

import typer
import yaml

from ddnn.cli.app import app
from ddnn.cli.options import (
    ConfigFile,
    DataSpec,
    Epochs,
    Grid,
    JsonFlag,
    Overrides,
    Seed,
    config_from,
    load_data,
    parse_ints,
)
from ddnn.cli.render import Rows, progress_bar, show
from ddnn.core.config import DDNNConfig, Precision
from ddnn.core.errors import DDNNError
from ddnn.data import MultiViewData, Splits, split
from ddnn.nn.studies.compare import (
    PAPER,
    Candidate,
    exit_count_candidates,
    measure,
    precision_candidates,
    strategy_candidates,
)
from ddnn.nn.studies.placement import PAPER as PLACEMENT_PAPER
from ddnn.nn.studies.placement import measure_placement, placement_candidates
from ddnn.nn.train import EpochCallback

Measure = Callable[[Candidate, Splits, EpochCallback], list[dict]]

CalibrationRule = Annotated[
    str,
    typer.Option(
        "--rule",
        help="how every row's thresholds are picked on validation data: max_loss (the least "
        "communication within calibration.max_loss of the last exit: the hybrid-precision "
        "paper's question), "
        "share (calibration.shares, as ddnn train) or best",
    ),
]


def _measure_calibrated(candidate: Candidate, parts: Splits, on_epoch: EpochCallback) -> list:
    """The hybrid-precision paper's comparisons: one row per candidate, at thresholds calibrated as
    `ddnn train` picks them."""
    return [measure(candidate, parts, on_epoch)]


def _compare(
    title: str,
    paper: dict,
    cfg: DDNNConfig,
    data: str,
    dataset: MultiViewData,
    as_json: bool,
    candidates_of: Callable[[Splits], list[Candidate]],
    measure: Measure = _measure_calibrated,
) -> None:
    """What every comparison does: split the data, train and measure each
    candidate (a progress bar per run), show the rows beside the paper's figures."""
    parts = split(dataset, cfg.train)
    rows = []
    for c in candidates_of(parts):
        name = " ".join(f"{k} {v}" for k, v in c.label.items())
        with progress_bar(name, c.epochs, as_json) as advance:
            rows.extend(measure(c, parts, lambda e, s: advance()))
    document = {"data": data, "rows": rows, "paper": paper}
    # one set of columns (a one-exit row has no edge columns): the widest row's
    columns = [k for k in max(rows, key=len) if k != "thresholds"]
    table = [{k: r.get(k) for k in columns} for r in rows]
    blocks = [Rows(f"{title} ({len(parts.test)} test samples)", table), f"paper: {paper}"]
    show(document, as_json, blocks)


def _paper(comparison: str) -> dict:
    """The hybrid-precision paper's figures for one of its comparisons, with the source named."""
    return {"source": PAPER["source"], **PAPER[comparison]}


compare_app = typer.Typer(
    help="The hybrid-precision paper's comparisons on your data: training strategies, "
    "one vs two early exits, hybrid precision.",
    no_args_is_help=True,
)
app.add_typer(compare_app, name="compare")


@compare_app.command("strategies")
def strategies(
    data: DataSpec = "synth",
    config: ConfigFile = None,
    overrides: Overrides = None,
    epochs: Epochs = None,
    seed: Seed = None,
    which: Annotated[
        str, typer.Option("--strategies", help="joint, separate, layerwise, comma-separated")
    ] = "separate,joint",
    early_weight: Annotated[
        float,
        typer.Option(
            help="joint: the early exits' share of the loss (the hybrid-precision paper: 0.6)"
        ),
    ] = 0.6,
    rule: CalibrationRule = "max_loss",
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """The hybrid-precision paper's Table II: separate vs joint training (and layerwise): the share
    of samples leaving early and the accuracy, at thresholds picked on validation data."""
    dataset = load_data(data, grid, as_json)
    cfg = config_from(config, overrides, dataset, epochs=epochs, seed=seed)
    named = [s.strip() for s in which.split(",")]
    candidates = strategy_candidates(cfg, named, early_weight, rule)
    _compare(
        "training strategies",
        _paper("strategies"),
        cfg,
        data,
        dataset,
        as_json,
        lambda _: candidates,
    )


@compare_app.command("exits")
def exits(
    data: DataSpec = "synth",
    config: ConfigFile = None,
    overrides: Overrides = None,
    epochs: Epochs = None,
    seed: Seed = None,
    groups: Annotated[
        str | None,
        typer.Option(help="the edge's device groups, e.g. '[[0,1,2],[3,4,5]]' (default: one)"),
    ] = None,
    rule: CalibrationRule = "max_loss",
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """The hybrid-precision paper's Table IV: one early exit (local) vs two (local, then an edge
    tier): the share leaving at each, accuracy and energy per sample."""
    edge_groups = None
    if groups is not None:
        edge_groups = yaml.safe_load(groups)
        if not isinstance(edge_groups, list) or not all(isinstance(g, list) for g in edge_groups):
            raise DDNNError(f"--groups must be a list of lists of devices, got {groups!r}")
    dataset = load_data(data, grid, as_json)
    cfg = config_from(config, overrides, dataset, epochs=epochs, seed=seed)
    _compare(
        "one vs two early exits", _paper("early_exits"), cfg, data, dataset, as_json,
        lambda parts: exit_count_candidates(cfg, edge_groups, rule),
    )  # fmt: skip


@compare_app.command("placement")
def placement(
    data: DataSpec = "synth",
    config: ConfigFile = None,
    overrides: Overrides = None,
    epochs: Epochs = None,
    seed: Seed = None,
    path: Annotated[
        str, typer.Option(help="filters of each block above the devices (edge, then cloud)")
    ] = "16,32,64,64",
    positions: Annotated[
        str, typer.Option(help="the blocks after which an exit is compared, e.g. 1,2,3")
    ] = "1,2,3",
    threshold: Annotated[
        float,
        typer.Option(
            help="the edge exit's normalized entropy threshold (the exit-placement paper: 0.3)"
        ),
    ] = 0.3,
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """The exit-placement paper's Figs. 5-6: single-exit models (SEM-k: the exit after block k of
    the path, one model each) against one multi-exit model (MEM, an exit after every compared block,
    trained jointly, activated one at a time). Rows: samples leaving at the edge, edge, cloud and
    overall accuracy, energy per sample."""
    dataset = load_data(data, grid, as_json)
    cfg = config_from(config, overrides, dataset, epochs=epochs, seed=seed)
    blocks, at = parse_ints(path, "--path"), parse_ints(positions, "--positions")
    _compare(
        "exit placement", PLACEMENT_PAPER, cfg, data, dataset, as_json,
        lambda parts: placement_candidates(cfg, blocks, at, threshold),
        measure_placement,
    )  # fmt: skip


@compare_app.command("precision")
def precision(
    data: DataSpec = "synth",
    config: ConfigFile = None,
    overrides: Overrides = None,
    epochs: Epochs = None,
    seed: Seed = None,
    variants: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="tier precisions to compare with the configured model, e.g. cloud=float or "
            "device=4bit,cloud=float (repeat for more; default: cloud=float)",
        ),
    ] = None,
    rule: CalibrationRule = "max_loss",
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """The hybrid-precision paper's hybrid precision: the model as configured (binary by default)
    and with other precisions per tier (a float cloud over binary devices by default): accuracy of
    every exit, energy per sample and its reduction against the full-precision network."""
    dataset = load_data(data, grid, as_json)
    cfg = config_from(config, overrides, dataset, epochs=epochs, seed=seed)
    wanted = [_tier_precisions(v) for v in variants or ["cloud=float"]]
    candidates = precision_candidates(cfg, wanted, rule)
    _compare(
        "hybrid precision",
        _paper("precision"),
        cfg,
        data,
        dataset,
        as_json,
        lambda _: candidates,
    )


def _tier_precisions(text: str) -> dict[str, str]:
    """ "device=4bit,cloud=float" -> {"device": "4bit", "cloud": "float"}."""
    out = {}
    for item in text.split(","):
        tier, sep, precision = item.strip().partition("=")
        if not sep or precision not in get_args(Precision):
            raise DDNNError(
                f"--variant takes tier=precision pairs (precision one of "
                f"{', '.join(get_args(Precision))}), got {text!r}"
            )
        out[tier] = precision
    return out
