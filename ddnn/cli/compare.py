"""`ddnn compare strategies`, `exits` and `precision`: seed 000's Tables II and IV and its
hybrid precision on our data, each row a model trained and calibrated as `ddnn train` does
(ddnn/nn/compare.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from ddnn.cli.app import compare_app
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
)
from ddnn.cli.render import Rows, progress_bar, show
from ddnn.core.errors import DDNNError
from ddnn.data import Splits, split

if TYPE_CHECKING:
    from ddnn.nn.compare import Candidate


def _rows(candidates: list[Candidate], parts: Splits, quiet: bool) -> list[dict]:
    """Each candidate trained, calibrated and measured, with a progress bar per run."""
    from ddnn.nn.compare import measure

    rows = []
    for c in candidates:
        name = " ".join(f"{k} {v}" for k, v in c.label.items())
        with progress_bar(name, c.epochs, quiet) as advance:
            rows.append(measure(c, parts, lambda e, s: advance()))
    return rows


def _show(title: str, document: dict, as_json: bool) -> None:
    table = [{k: v for k, v in r.items() if k != "thresholds"} for r in document["rows"]]
    show(document, as_json, [Rows(title, table), f"paper: {document['paper']}"])


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
        float, typer.Option(help="joint: the early exits' share of the loss (seed 000: 0.6)")
    ] = 0.6,
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """Seed 000's Table II: separate vs joint training (and layerwise): the share of
    samples leaving early and the accuracy, at thresholds picked on validation data."""
    from ddnn.nn.compare import PAPER, strategy_candidates

    cfg = config_from(config, overrides, epochs=epochs, seed=seed)
    parts = split(load_data(data, grid, as_json), cfg.train)
    candidates = strategy_candidates(cfg, [s.strip() for s in which.split(",")], early_weight)
    rows = _rows(candidates, parts, as_json)
    document = {"data": data, "rows": rows, "paper": PAPER["strategies"]}
    _show(f"training strategies ({len(parts.test)} test samples)", document, as_json)


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
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """Seed 000's Table IV: one early exit (local) vs two (local, then an edge tier): the
    share leaving at each, accuracy and energy per sample."""
    from ddnn.nn.compare import PAPER, exit_count_candidates
    from ddnn.nn.train import adapt_config

    cfg = config_from(config, overrides, epochs=epochs, seed=seed)
    parts = split(load_data(data, grid, as_json), cfg.train)
    edge_groups = None
    if groups is not None:
        edge_groups = yaml.safe_load(groups)
        if not isinstance(edge_groups, list) or not all(isinstance(g, list) for g in edge_groups):
            raise DDNNError(f"--groups must be a list of lists of devices, got {groups!r}")
    candidates = exit_count_candidates(adapt_config(cfg, parts.train), edge_groups)
    rows = _rows(candidates, parts, as_json)
    document = {"data": data, "rows": rows, "paper": PAPER["early_exits"]}
    _show(f"one vs two early exits ({len(parts.test)} test samples)", document, as_json)


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
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """Seed 000's hybrid precision: the model as configured (binary by default) and with
    other precisions per tier (a float cloud over binary devices by default): accuracy of
    every exit, energy per sample and its reduction against the full-precision network."""
    from ddnn.nn.compare import PAPER, precision_candidates

    cfg = config_from(config, overrides, epochs=epochs, seed=seed)
    wanted = [_tier_precisions(v) for v in variants or ["cloud=float"]]
    parts = split(load_data(data, grid, as_json), cfg.train)
    candidates = precision_candidates(cfg, wanted)
    rows = _rows(candidates, parts, as_json)
    document = {"data": data, "rows": rows, "paper": PAPER["precision"]}
    _show(f"hybrid precision ({len(parts.test)} test samples)", document, as_json)


def _tier_precisions(text: str) -> dict[str, str]:
    """ "device=4bit,cloud=float" -> {"device": "4bit", "cloud": "float"}."""
    out = {}
    for item in text.split(","):
        tier, sep, precision = item.strip().partition("=")
        if not sep or precision not in ("binary", "2bit", "4bit", "float"):
            raise DDNNError(
                f"--variant takes tier=precision pairs (precision binary, 2bit, 4bit or float), "
                f"got {text!r}"
            )
        out[tier] = precision
    return out
