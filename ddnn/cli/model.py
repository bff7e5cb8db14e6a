"""Training and offline evaluation: `ddnn train`, `eval`, `sweep`, `calibrate`, `router`,
`baseline`, `results`, `config` and `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import yaml

from ddnn.cli.app import app
from ddnn.cli.options import (
    ConfigFile,
    DataSpec,
    Epochs,
    Grid,
    JsonFlag,
    ModelPath,
    OptionalData,
    OptionalGrid,
    Overrides,
    Seed,
    Split,
    config_from,
    load_data,
    parse_devices,
    parse_ints,
    parse_thresholds,
)
from ddnn.cli.render import Rows, err, out, progress_bar, report_blocks, show
from ddnn.core.config import DDNNConfig, with_exit_settings
from ddnn.core.energy import energy_uj
from ddnn.core.errors import DDNNError
from ddnn.core.exits import cascade
from ddnn.core.files import make_folder, writable_file
from ddnn.data import MultiViewData, absolute_spec, split
from ddnn.live.access import write_access
from ddnn.nn.calibration import (
    RULES,
    calibrated,
    local_fraction_for_budget,
    pick_thresholds,
    thresholds_for_fractions,
)
from ddnn.nn.checkpoint import load_model, save_model
from ddnn.nn.evaluate import (
    accuracy_by_device_count,
    accuracy_each_missing,
    device_ranking,
    evaluate,
    load_for_eval,
    model_exit_points,
    presence_mask,
    run_model,
    write_decisions,
)
from ddnn.nn.evaluate import sweep as sweep_rows
from ddnn.nn.export import export
from ddnn.nn.model import DDNN
from ddnn.nn.studies.router import compare_router
from ddnn.nn.train import fit_and_calibrate, individual_accuracy, training_stages
from ddnn.ops.report.results import BARS, seed_results


def _epoch_info(stats: dict[str, float]) -> str:
    accs = " ".join(
        f"{k.removeprefix('train_acc_')} {v:.0f}%" for k, v in stats.items() if k != "loss"
    )
    return f"loss {stats['loss']:.3f}  train acc: {accs}"


@app.command()
def train(
    data: DataSpec = "synth",
    out_path: Annotated[Path, typer.Option("--out", help="model file to write")] = Path("model.pt"),
    config: ConfigFile = None,
    overrides: Overrides = None,
    epochs: Epochs = None,
    seed: Seed = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="joint (default), separate or layerwise: how the exits are trained"),
    ] = None,
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """Train a DDNN (jointly over all exits by default), pick exit thresholds on held-out
    data, save it."""
    writable_file(out_path, "model file")  # before the training it would hold, not after
    dataset = load_data(data, grid, as_json)
    cfg = config_from(config, overrides, dataset, epochs=epochs, seed=seed, strategy=strategy)
    parts = split(dataset, cfg.train)
    epochs_in_all = len(training_stages(cfg)) * cfg.train.epochs
    with progress_bar("training", epochs_in_all, as_json) as advance:
        result, picked = fit_and_calibrate(parts, cfg, lambda e, s: advance(info=_epoch_info(s)))
    cfg, model = result.config, result.model
    test_report = evaluate(run_model(model, parts.test), model_exit_points(model, cfg))
    meta = {
        "data": absolute_spec(data),
        "grid": grid,
        "train_seconds": round(result.seconds, 2),
        "final_epoch": result.history[-1],
        "calibrated_on": "validation" if picked else None,
    }
    save_model(out_path, model, cfg, meta)
    summary = {"model": str(out_path), **meta, "thresholds": picked, "test": test_report}
    n_validation = len(parts.validation) if parts.validation else 0
    show(
        summary,
        as_json,
        [
            f"trained on {len(parts.train)} samples in {result.seconds:.1f}s; thresholds "
            f"picked on {n_validation} validation samples: {picked}",
            f"wrote {out_path}; test split:",
            *report_blocks(test_report),
        ],
    )


def _eval_context(
    model_path: Path, data: str | None, grid: str | None, part: str, quiet: bool
) -> tuple[DDNN, DDNNConfig, dict[str, Any], MultiViewData]:
    """Load a model, its metadata and the part of a data set to evaluate it on (by default
    the test split of the data it was trained on), with progress while data is generated."""
    return load_for_eval(model_path, data, grid, part, lambda s, g: load_data(s, g, quiet))


@app.command("eval")
def eval_(
    model_path: ModelPath,
    data: OptionalData = None,
    threshold: Annotated[
        str | None,
        typer.Option(help="exit threshold T for every exit but the last, or local=T,edge=T"),
    ] = None,
    drop: Annotated[
        str | None,
        typer.Option(
            help="drop threshold (the exit-placement paper) for every exit but the last, or "
            "local=D: samples beyond it abstain there instead of escalating"
        ),
    ] = None,
    missing: Annotated[
        str | None, typer.Option(help="devices absent, e.g. 0,3 (as in Fig. 10)")
    ] = None,
    each_missing: Annotated[
        bool, typer.Option(help="also evaluate with each single device absent (Fig. 10)")
    ] = False,
    scaling: Annotated[
        bool, typer.Option(help="also evaluate as devices are added one by one (Fig. 8)")
    ] = False,
    order: Annotated[
        str | None,
        typer.Option(help="device order for --scaling (default: worst to best device alone)"),
    ] = None,
    part: Split = "test",
    grid: OptionalGrid = None,
    decisions: Annotated[
        Path | None,
        typer.Option(help="write each sample's decision (class, exit) as JSON lines here"),
    ] = None,
    robust_fusion: Annotated[
        bool,
        typer.Option(
            help="trimmed fusion at the local exit, as `ddnn aggregator --robust-fusion` "
            "runs it: what it costs on clean data (ddnn/core/fusion.py)"
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a model (a model file, or a `ddnn export` directory: exactly what the live
    services run): accuracy per exit, overall accuracy, exit fractions, bytes."""
    if decisions is not None:
        writable_file(decisions, "decisions file", stream=True)
    model, cfg, _, dataset = _eval_context(model_path, data, grid, part, as_json)
    if robust_fusion and model.cfg.local is not None:  # every run_model below fuses so
        model.cfg = model.cfg.model_copy(
            update={"local": model.cfg.local.model_copy(update={"robust": True})}
        )
    thresholds = parse_thresholds(threshold, model.exits)
    drops = parse_thresholds(drop, model.exits)
    cfg = with_exit_settings(cfg, thresholds, drops, "--threshold/--drop")
    points = model_exit_points(model, cfg)
    absent = parse_devices(missing)
    present = presence_mask(len(dataset), dataset.n_views, absent)
    outputs = run_model(model, dataset, present)
    decided = cascade(points, outputs.inputs)
    report = evaluate(outputs, points, decided)
    report["missing"] = absent
    report["energy_uj"] = energy_uj(cfg.model, outputs.present, decided.exit_index, model.exits)
    if decisions is not None:
        write_decisions(decisions, outputs, points, decided)
    if each_missing:
        report["each_missing"] = accuracy_each_missing(model, dataset, points)
    if scaling:
        device_order = parse_ints(order, "--order") if order else device_ranking(model, dataset)
        report["scaling"] = accuracy_by_device_count(model, dataset, points, device_order)
    blocks = report_blocks(report)
    if each_missing:
        blocks.append(Rows("each single device missing (accuracy %)", report["each_missing"]))
    if scaling:
        blocks.append(Rows("devices added one at a time (accuracy %)", report["scaling"]))
    show(report, as_json, blocks)


@app.command()
def sweep(
    model_path: ModelPath,
    data: OptionalData = None,
    rule: Annotated[
        str, typer.Option(help="how to pick T: best (accuracy) or max_loss (cheapest within)")
    ] = "max_loss",
    max_loss: Annotated[float, typer.Option(help="accuracy points max_loss may give up")] = 1.0,
    part: Split = "test",
    grid: OptionalGrid = None,
    as_json: JsonFlag = False,
) -> None:
    """Sweep the local exit threshold T over 0..1 (the paper's Table II) and pick one."""
    model, cfg, _, dataset = _eval_context(model_path, data, grid, part, as_json)
    points = model_exit_points(model, cfg)
    if len(points) < 2:
        raise DDNNError("this model has a single exit: there is no threshold to sweep")
    outputs = run_model(model, dataset)
    rows = sweep_rows(outputs, points)
    grid = [r["threshold"] for r in rows]
    first = points[0].name
    threshold = pick_thresholds(outputs, points, rule, max_loss, grid=grid, search=[first])[first]
    picked = next(r for r in rows if r["threshold"] == threshold)
    document = {"exit": points[0].name, "rows": rows, "rule": rule, "picked": picked}
    if rule == "max_loss":
        document["max_loss"] = max_loss
    title = f"{points[0].name} exit threshold sweep ({len(dataset)} samples)"
    show(document, as_json, [Rows(title, rows), f"picked T = {picked['threshold']} by rule {rule}"])


@app.command()
def calibrate(
    model_path: ModelPath,
    data: OptionalData = None,
    exit_fraction: Annotated[
        str | None,
        typer.Option(help="target share of all samples exiting: 0.6 (first exit) or local=0.6"),
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="bytes per device per sample to stay within")
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option(help="share, max_loss or best: the config's calibration rule (ddnn config)"),
    ] = None,
    max_loss: Annotated[
        float | None, typer.Option(help="accuracy points max_loss may give up (config's)")
    ] = None,
    part: Annotated[str, typer.Option(help="held-out part to calibrate on")] = "validation",
    write: Annotated[bool, typer.Option(help="store the thresholds in the model file")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Pick exit thresholds on held-out data for a target exit fraction, a bytes budget or
    an accuracy rule, and store them in the model file."""
    if sum(x is not None for x in (exit_fraction, budget, rule)) != 1:
        raise DDNNError("give exactly one of --exit-fraction, --budget or --rule")
    if write and model_path.is_dir():
        raise DDNNError(
            f"{model_path} is a `ddnn export` directory, and exports are never changed: "
            "calibrate the model file and export it again (or pass --no-write)"
        )
    model, cfg, meta, dataset = _eval_context(model_path, data, None, part, as_json)
    points = model_exit_points(model, cfg)
    if len(points) < 2:
        raise DDNNError("this model has a single exit: there is no threshold to calibrate")
    outputs = run_model(model, dataset)
    if rule is not None:
        if rule not in RULES:
            raise DDNNError(f"--rule must be {', '.join(RULES)}, got {rule!r}")
        c = cfg.calibration
        if max_loss is not None:
            c = c.model_copy(update={"max_loss": max_loss})
        thresholds = calibrated(outputs, points, c, rule)
    else:
        if budget is not None:
            if points[0].name != "local":
                raise DDNNError("a bytes budget needs a local exit")
            fractions = {"local": local_fraction_for_budget(outputs, budget)}
        else:
            fractions = {
                name: float(v) for name, v in parse_thresholds(exit_fraction, model.exits).items()
            }
        thresholds = thresholds_for_fractions(outputs, points, fractions)
    cfg = with_exit_settings(cfg, thresholds, {}, "calibration")
    report = evaluate(outputs, model_exit_points(model, cfg))
    if write:
        save_model(model_path, model, cfg, {**meta, "calibrated_on": part})
    document = {"thresholds": thresholds, "written": write, part: report}
    written = f" written to {model_path}" if write else ""
    show(document, as_json, [f"thresholds {thresholds}{written}", *report_blocks(report)])


@app.command()
def router(
    model_path: ModelPath,
    data: OptionalData = None,
    exit_name: Annotated[
        str | None, typer.Option("--exit", help="the exit to compare at (default: the first)")
    ] = None,
    coverages: Annotated[
        str, typer.Option(help="shares of samples the exit keeps, comma-separated")
    ] = "0.5,0.6,0.7,0.8,0.9,0.95",
    grid: OptionalGrid = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare a learned router (the learned-router paper) with entropy thresholding at equal
    coverage: a router fitted on the training split per coverage, both thresholds picked on
    validation data, overall accuracy measured on the test split."""
    try:
        wanted = [float(c) for c in coverages.split(",")]
    except ValueError:
        raise DDNNError(
            f"--coverages must be numbers separated by commas, got {coverages!r}"
        ) from None
    if not wanted or not all(0 < c < 1 for c in wanted):
        raise DDNNError(f"every coverage must lie strictly between 0 and 1, got {coverages!r}")
    model, cfg, _, dataset = _eval_context(model_path, data, grid, "all", as_json)
    with progress_bar("routers", len(wanted), as_json) as advance:
        parts = split(dataset, cfg.train)
        document = compare_router(model, cfg, parts, exit_name, wanted, on_row=advance)
    wins = sum(r["router_accuracy"] >= r["entropy_accuracy"] for r in document["rows"])
    title = (
        f"overall accuracy % at equal coverage of the {document['exit']} exit "
        f"({document['samples']['test']} test samples)"
    )
    show(
        document,
        as_json,
        [Rows(title, document["rows"]), f"router >= entropy at {wins} of {len(wanted)} coverages"],
    )


@app.command()
def baseline(
    data: DataSpec = "synth",
    config: ConfigFile = None,
    overrides: Overrides = None,
    epochs: Epochs = None,
    seed: Seed = None,
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """Train each device's slice alone and test it (the paper's "Individual" accuracy)."""
    dataset = load_data(data, grid, as_json)
    cfg = config_from(config, overrides, dataset, epochs=epochs, seed=seed)
    parts = split(dataset, cfg.train)
    with progress_bar("devices", dataset.n_views * cfg.train.epochs, as_json) as advance:
        accuracies = [
            individual_accuracy(parts, d, cfg, on_epoch=lambda e, s: advance())
            for d in range(dataset.n_views)
        ]
    document = {
        "individual": accuracies,
        "mean": round(float(np.mean(accuracies)), 2),
        "samples": len(parts.test),
    }
    row = {f"device {d}": a for d, a in enumerate(accuracies)} | {"mean": document["mean"]}
    show(
        document, as_json, [Rows(f"individual accuracy % ({len(parts.test)} test samples)", [row])]
    )


@app.command()
def results(
    seeds: Annotated[str, typer.Option(help="training seeds, e.g. 0,1,2")] = "0,1,2",
    data: DataSpec = "synth",
    overrides: Overrides = None,
    workdir: Annotated[Path, typer.Option(help="where the models of the runs are written")] = Path(
        "results"
    ),
    baseline: Annotated[
        bool, typer.Option(help="also train each device alone (the Individual row)")
    ] = True,
    held_out: Annotated[
        str | None,
        typer.Option(
            help="evaluate on all of this data SPEC instead of the test part of --data: "
            "fresh data none of the models saw, e.g. synth:n=4000,seed=7 (the same "
            "synthetic world, another seed), so that the bars are judged with less noise"
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The README's results table over several seeds: train, evaluate with each device
    missing and train the individual baselines once per seed (each with the real commands),
    then every measure per seed with its mean and spread, and the bars each seed meets."""
    chosen = parse_ints(seeds, "--seeds")
    make_folder(workdir, "--workdir folder")
    document = seed_results(
        chosen, data, overrides or [], workdir, baseline, lambda line: err.print(line), held_out
    )
    rows = []
    for key, stats in document["summary"].items():
        row: dict[str, Any] = {"measure": key}
        row |= {f"seed {r['seed']}": r[key] for r in document["rows"]}
        row |= {"mean": stats["mean"], "std": stats["std"]}
        rows.append(row)
    bar_rows = [
        {"bar": BARS[name]} | {f"seed {r['seed']}": r["bars"].get(name) for r in document["rows"]}
        for name in BARS
    ]
    show(
        document,
        as_json,
        [
            Rows(
                f"results over seeds {chosen}, trained on {data}, evaluated on "
                f"{document['evaluated_on']}",
                rows,
            ),
            Rows("bars", bar_rows),
        ],
    )


@app.command("config")
def show_config(
    config: ConfigFile = None, overrides: Overrides = None, as_json: JsonFlag = False
) -> None:
    """Print the effective configuration (defaults, file, overrides) as YAML, or JSON."""
    document = config_from(config, overrides).model_dump(mode="json")
    if as_json:
        show(document, as_json)
        return
    out.print(yaml.safe_dump(document, sort_keys=False), end="")


@app.command("export")
def export_(
    model_path: ModelPath,
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the artifacts")],
    deployment: Annotated[
        str, typer.Option(help="the deployment whose broker accounts to write")
    ] = "default",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="export into a non-empty folder that holds no earlier export: the export's "
            "files replace those of the same names there, no other file is deleted",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Split a trained model into one artifact per role (each device, the aggregator, each
    edge, the cloud) plus a manifest with the config, thresholds and a hash per artifact,
    and broker accounts for one deployment of it (`ddnn credentials` writes more). --out is
    a new or empty folder, or an earlier export (replaced); any other folder needs --force."""
    model, cfg, meta = load_model(model_path)
    manifest = export(model, cfg, out_dir, meta, force=force)
    access = write_access(out_dir, cfg.model, deployment, manifest.model_version)
    rows = [
        {"role": role, "file": a.file, "bytes": a.bytes, "sha256": a.sha256[:16]}
        for role, a in manifest.artifacts.items()
    ]
    document = {
        "out": str(out_dir),
        "model_version": manifest.model_version,
        "artifacts": rows,
        "access": str(access),
    }
    show(
        document,
        as_json,
        [
            Rows(f"exported model version {manifest.model_version} to {out_dir}", rows),
            f"broker accounts of deployment {deployment!r}: {access} (each role's file goes to "
            "its machine only)",
        ],
    )
