"""Training and offline evaluation: `ddnn train`, `eval`, `hard`, `sweep`, `calibrate`, `router`,
`baseline`, `results`, `config` and `export`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import yaml

from ddnn.cli.app import app
from ddnn.cli.options import (
    CaptureAccounts,
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
from ddnn.core.config import EXIT_ORDER, DDNNConfig, with_exit_settings
from ddnn.core.energy import energy_uj
from ddnn.core.errors import DDNNError
from ddnn.core.exits import cascade
from ddnn.core.files import make_folder, replaced, writable_file
from ddnn.core.hard import DEFAULT_ENTROPY, HardRule
from ddnn.data import (
    MultiViewData,
    Splits,
    absolute_spec,
    check_fits,
    mixed,
    save_mvmc,
    split,
    trained_on,
)
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
    load_evaluable,
    load_for_eval,
    model_exit_points,
    presence_mask,
    run_model,
    write_decisions,
)
from ddnn.nn.evaluate import sweep as sweep_rows
from ddnn.nn.export import export
from ddnn.nn.mining import mine
from ddnn.nn.model import DDNN, build_model
from ddnn.nn.studies.router import compare_router
from ddnn.nn.train import fit_and_calibrate, individual_accuracy, training_stages
from ddnn.ops.report.results import BARS, seed_results


def _epoch_info(stats: dict[str, float]) -> str:
    accs = " ".join(
        f"{k.removeprefix('train_acc_')} {v:.0f}%" for k, v in stats.items() if k != "loss"
    )
    return f"loss {stats['loss']:.3f}  train acc: {accs}"


FREEZE_TIERS = ("devices", "edges")


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
    init: Annotated[
        Path | None,
        typer.Option(
            help="a model file to go on from (its config too, changed by --set), on --data, "
            "mixed with the data it was trained on (--mix)"
        ),
    ] = None,
    mix: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.95,
            help="with --init: the share of the training samples drawn from --old-data, so that "
            "what the model knew is not forgotten; thresholds are then picked on its "
            "validation part (0: the new data alone, for both)",
        ),
    ] = 0.5,
    old_data: Annotated[
        str | None,
        typer.Option(help="with --init: the old data SPEC (default: the one it was trained on)"),
    ] = None,
    freeze: Annotated[
        str | None,
        typer.Option(
            help="devices, edges or devices,edges: tiers training leaves unchanged (with --init "
            "the device artifacts stay byte-identical, so only upper tiers need rolling out)"
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a DDNN (jointly over all exits by default), pick exit thresholds on held-out
    data, save it. With --init, go on from a trained model on new data."""
    writable_file(out_path, "model file")  # before the training it would hold, not after
    frozen = None if freeze is None else f"[{','.join(_tiers(freeze))}]"
    base = start = None
    if init is not None:
        if config is not None:
            raise DDNNError("--init starts from the model's own config: change it with --set")
        start, base, init_meta = load_model(init)
    dataset = load_data(data, grid, as_json)
    if base is not None:
        check_fits(dataset, base.model)
    cfg = config_from(
        config,
        overrides,
        dataset,
        base,
        epochs=epochs,
        seed=seed,
        strategy=strategy,
        freeze=frozen,
    )
    parts = split(dataset, cfg.train)
    meta: dict[str, Any] = {"data": absolute_spec(data), "grid": grid}
    before = None
    if start is not None and base is not None:
        start = _continued(start, cfg, init)
        before = evaluate(run_model(start, parts.test), model_exit_points(start, base))
        spec, old_grid = (old_data, grid) if old_data else trained_on(init_meta)
        if mix > 0:
            old = split(load_data(spec, old_grid, as_json), cfg.train)
            parts = _mixed(parts, old, mix, cfg.train.seed)
        meta["init"] = {"model": str(init), "old_data": absolute_spec(spec), "mix": mix}
    epochs_in_all = len(training_stages(cfg)) * cfg.train.epochs
    with progress_bar("training", epochs_in_all, as_json) as advance:
        result, picked = fit_and_calibrate(
            parts, cfg, lambda e, s: advance(info=_epoch_info(s)), start
        )
    cfg, model = result.config, result.model
    test_report = evaluate(run_model(model, parts.test), model_exit_points(model, cfg))
    meta |= {
        "train_seconds": round(result.seconds, 2),
        "final_epoch": result.history[-1],
        "calibrated_on": "validation" if picked else None,
    }
    save_model(out_path, model, cfg, meta)
    summary = {"model": str(out_path), **meta, "thresholds": picked, "test": test_report}
    n_validation = len(parts.validation) if parts.validation else 0
    lines = [
        f"trained on {len(parts.train)} samples in {result.seconds:.1f}s; thresholds "
        f"picked on {n_validation} validation samples: {picked}",
        f"wrote {out_path}; test split:",
        *report_blocks(test_report),
    ]
    if before is not None:
        summary["test_before"] = before
        lines.append(
            f"{init} on the same test split: {before['accuracy']['overall']}% overall "
            f"(now {test_report['accuracy']['overall']}%)"
        )
    show(summary, as_json, lines)


def _tiers(text: str) -> list[str]:
    tiers = [t.strip() for t in text.split(",") if t.strip()]
    if not tiers or any(t not in FREEZE_TIERS for t in tiers):
        raise DDNNError(
            f"--freeze takes {' or '.join(FREEZE_TIERS)} (comma-separated), got {text!r}"
        )
    return tiers


def _continued(model: DDNN, cfg: DDNNConfig, path: Path) -> DDNN:
    """`model`'s weights in a model built from `cfg` (its own config with the --set
    overrides): refused by name where those changed its shape."""
    fresh = build_model(cfg)
    try:
        fresh.load_state_dict(model.state_dict())
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise DDNNError(
            f"the weights of {path} do not fit the config with --set: {first}"
        ) from None
    return fresh


def _mixed(new: Splits, old: Splits, share: float, seed: int) -> Splits:
    """New training samples with `share` of old ones; thresholds are picked on the old
    validation part (new data such as hard examples is not the traffic a deployment sees: it
    would move them), and the report is on the new test part."""
    validation = new.validation if old.validation is None else old.validation
    return Splits(mixed(new.train, old.train, share, seed), validation, new.test)


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
    against: Annotated[
        Path | None,
        typer.Option(
            help="another model (an older version: a model file or an export) evaluated on "
            "the same samples with its own thresholds, and the gain per exit"
        ),
    ] = None,
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
    if against is not None:
        old, old_cfg, _ = load_evaluable(against)
        check_fits(dataset, old_cfg.model)
        old_report = evaluate(run_model(old, dataset, present), model_exit_points(old, old_cfg))
        report["against"] = {"model": str(against), **old_report}
        report["gain"] = _gain(report, old_report)
        blocks.append(Rows(f"against {against} on the same samples", _gain_rows(report)))
    show(report, as_json, blocks)


def _gain(new: dict[str, Any], old: dict[str, Any]) -> dict[str, dict[str, float]]:
    """New minus old, in points: accuracy per exit (and overall) and exit fractions."""
    return {
        key: {
            tier: round(value - old[key][tier], 2)
            for tier, value in new[key].items()
            if value is not None and old[key].get(tier) is not None
        }
        for key in ("accuracy", "exit_fraction")
    }


def _gain_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    tiers = [*EXIT_ORDER, "overall"]
    old = report["against"]
    return [
        {"": f"{label} {which}", **{t: source[key].get(t) for t in tiers}}
        for key, label in (("accuracy", "accuracy %"), ("exit_fraction", "exit %"))
        for which, source in (("before", old), ("now", report), ("gain", report["gain"]))
    ]


@app.command()
def hard(
    model_path: ModelPath,
    out_path: Annotated[Path, typer.Option("--out", help="the MVMC .npz of the hard samples")],
    data: OptionalData = None,
    part: Split = "all",
    grid: OptionalGrid = None,
    entropy: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="a sample whose deciding exit's normalized entropy is above this is hard",
        ),
    ] = DEFAULT_ENTROPY,
    as_json: JsonFlag = False,
) -> None:
    """A data set's hard examples for a model (by default all of --data): the samples that
    escalated past the local exit, abstained or decided with entropy above --entropy, as an
    MVMC file to go on training from (`ddnn train --init MODEL --data mvmc:FILE`), and a CSV
    beside it (--out's name, .csv) of each one's label, decision, exit, entropy and reasons."""
    table = out_path.with_suffix(".csv")
    writable_file(out_path, "data file")
    writable_file(table, "CSV file")
    model, cfg, _, dataset = load_for_eval(
        model_path, data, grid, part, lambda s, g: load_data(s, g, as_json)
    )
    hard = mine(
        model, cfg, dataset, HardRule(entropy), presence_mask(len(dataset), dataset.n_views)
    )
    if len(hard.rows) == 0:
        raise DDNNError(f"no hard examples among the {len(dataset)} samples: nothing written")
    save_mvmc(out_path, dataset.x[hard.rows], dataset.view_labels[hard.rows])
    with replaced(table) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sample", "row", "label", "predicted", "exit", "entropy", "reasons"])
        for i, row in enumerate(hard.rows):
            writer.writerow(
                [
                    i,
                    int(row),
                    dataset.classes[dataset.labels[row]],
                    hard.predicted[i] or "",
                    hard.exits[i],
                    f"{hard.entropy[i]:.4f}",
                    ";".join(hard.reasons[i]),
                ]
            )
    summary = {
        "path": str(out_path),
        "csv": str(table),
        "mined": len(dataset),
        "hard": len(hard.rows),
        "entropy": entropy,
        "reasons": hard.reason_counts,
        "exits": {name: hard.exits.count(name) for name in dict.fromkeys(hard.exits)},
    }
    show(
        summary,
        as_json,
        [
            f"{len(hard.rows)} of {len(dataset)} samples are hard ({hard.reason_counts}); "
            f"wrote {out_path} and {table}"
        ],
    )


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
    capture: CaptureAccounts = False,
    as_json: JsonFlag = False,
) -> None:
    """Split a trained model into one artifact per role (each device, the aggregator, each
    edge, the cloud) plus a manifest with the config, thresholds and a hash per artifact,
    and broker accounts for one deployment of it (`ddnn credentials` writes more). --out is
    a new or empty folder, or an earlier export (replaced); any other folder needs --force."""
    model, cfg, meta = load_model(model_path)
    manifest = export(model, cfg, out_dir, meta, force=force)
    access = write_access(out_dir, cfg.model, deployment, manifest.model_version, capture)
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
