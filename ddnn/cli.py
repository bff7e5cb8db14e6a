"""The `ddnn` command line.

Every command prints human-readable progress and tables by default and one JSON document on
stdout with `--json`, and then nothing else on stdout (see `_json_mode`). User mistakes (a
missing file, a bad config, an unknown device) end in one line `error: ...` and exit status
2, never a traceback. Commands import torch and the model code inside their bodies, so that
`ddnn --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ddnn.data import DEFAULT_SYNTH_SAMPLES, DEFAULT_SYNTH_SEED
from ddnn.errors import DDNNError

if TYPE_CHECKING:
    from ddnn.config import DDNNConfig
    from ddnn.data import MultiViewData
    from ddnn.model import DDNN

app = typer.Typer(
    help="Distributed deep neural networks over the cloud, the edge and end devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

DataSpec = Annotated[
    str,
    typer.Option(
        "--data",
        help="synth (the default synthetic set), mvmc:PATH (an MVMC-format .npz) or "
        "tiles:PATH (an .npz of images X (N,H,W[,C]) and labels y (N,), cut into --grid views)",
    ),
]
Grid = Annotated[str, typer.Option(help="views per image for tiles:PATH, as ROWSxCOLS")]
OptionalGrid = Annotated[str | None, typer.Option(help="views per image for tiles:PATH")]
_json_stdout: TextIO | None = None  # the real stdout, while a --json command runs


def _json_mode(on: bool) -> bool:
    """`--json` promises stdout holds one JSON document and nothing else. So, as soon as the
    flag is parsed, the process's file descriptor 1 is pointed at stderr: whatever else this
    process or a child it starts writes to stdout (a table, a library's print, a subprocess
    with inherited stdout) lands on stderr, and only `emit_json` writes to the real stdout.
    Done on the descriptor, not on `sys.stdout`, because child processes inherit only that."""
    global _json_stdout
    if on and _json_stdout is None:
        sys.stdout.flush()
        _json_stdout = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    return on


JsonFlag = Annotated[
    bool,
    typer.Option("--json", help="print one JSON document on stdout", callback=_json_mode),
]
ModelPath = Annotated[
    Path,
    typer.Option("--model", help="a model file written by `ddnn train` (or a `ddnn export` dir)"),
]


@contextmanager
def progress_bar(description: str, total: int, quiet: bool) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields `advance(n=1, **fields)`."""
    if quiet:
        yield lambda *a, **k: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, completed: int | None = None, info: str = "") -> None:
            if completed is not None:
                bar.update(task, completed=completed, info=info)
            else:
                bar.update(task, advance=n, info=info)

        yield advance


def emit_json(document: Any) -> None:
    """Write a command's JSON document: to the real stdout (see `_json_mode`)."""
    stream = _json_stdout or sys.stdout
    stream.write(json.dumps(document, indent=2) + "\n")
    stream.flush()


def load_data(spec: str, grid: str, quiet: bool) -> MultiViewData:
    from ddnn import data as data_mod

    if spec == "synth" and not data_mod.synthetic_cache_path().exists():
        with progress_bar("generating synthetic set", data_mod.DEFAULT_SYNTH_SAMPLES, quiet) as adv:
            return data_mod.load_spec(spec, grid, progress=lambda done: adv(completed=done))
    return data_mod.load_spec(spec, grid)


def parse_devices(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise DDNNError(f"device list must look like 0,3, got {text!r}") from None


def parse_thresholds(text: str | None, exits: list[str]) -> dict[str, float]:
    """`0.8` sets every exit but the last; `local=0.8,edge=0.5` sets the named ones."""
    if text is None:
        return {}
    try:
        if "=" not in text:
            return dict.fromkeys(exits[:-1], float(text))
        pairs = (item.split("=", 1) for item in text.split(","))
        chosen = {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise DDNNError(f"threshold must be a number or name=number pairs, got {text!r}") from None
    unknown = set(chosen) - set(exits[:-1])
    if unknown:
        raise DDNNError(f"no exit {sorted(unknown)} with a threshold; exits: {exits[:-1]}")
    return chosen


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    out.print(table)


def print_report(report: dict[str, Any]) -> None:
    from ddnn.config import EXIT_ORDER

    tiers = [*EXIT_ORDER, "overall"]
    rows = [
        {
            "": "accuracy %",
            **{t: report["accuracy"][t] for t in tiers},
        },
        {"": "exit %", **{t: report["exit_fraction"].get(t) for t in tiers}},
    ]
    print_table(f"{report['samples']} samples, devices {report['present_devices']}", rows)
    b = report["bytes_per_device"]
    out.print(
        f"bytes per device per sample: formula (1) {b['formula']}, measured {b['measured']}, "
        f"raw offload {b['raw']} ({b['raw_over_measured']}x less than raw)"
    )
    out.print(f"thresholds: {report['threshold']} ({report['criterion']})")


# ---------------------------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    out_path: Annotated[Path, typer.Option("--out", help="the .npz file to write")],
    samples: Annotated[int, typer.Option(min=1, help="number of samples")] = DEFAULT_SYNTH_SAMPLES,
    seed: Annotated[
        int, typer.Option(help="random seed; the same seed gives the same file")
    ] = DEFAULT_SYNTH_SEED,
    as_json: JsonFlag = False,
) -> None:
    """Generate a synthetic multi-view multi-camera set in the MVMC format."""
    from ddnn import synth
    from ddnn.data import save_mvmc

    with progress_bar("rendering", samples, as_json) as advance:
        x, y = synth.synthesize(samples, seed=seed, progress=lambda d: advance(completed=d))
    save_mvmc(out_path, x, y)
    absent = (y == synth.ABSENT).mean(axis=0)
    summary = {
        "path": str(out_path),
        "samples": samples,
        "seed": seed,
        "absent_fraction_per_camera": [round(float(a), 3) for a in absent],
    }
    if as_json:
        emit_json(summary)
    else:
        absent_text = ", ".join(f"{a:.0%}" for a in absent)
        out.print(f"wrote {samples} samples to {out_path}; absent per camera: {absent_text}")


# ---------------------------------------------------------------------- train and evaluate


ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="a YAML or JSON config (see `ddnn config`)")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config value, e.g. --set train.device_dropout=0.1"),
]


Epochs = Annotated[int | None, typer.Option(min=1, help="training epochs")]
Seed = Annotated[int | None, typer.Option(help="seed of initialization, batches and dropout")]


def _config(config: Path | None, overrides: list[str] | None, **flags: Any) -> DDNNConfig:
    from ddnn.config import load_config

    extra = [f"train.{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(config, [*(overrides or []), *extra])


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
    grid: Grid = "2x3",
    as_json: JsonFlag = False,
) -> None:
    """Train a DDNN jointly over all exits, pick exit thresholds on held-out data, save it."""
    from ddnn.checkpoint import save_model
    from ddnn.data import absolute_spec
    from ddnn.evaluate import evaluate, exit_points, pick_thresholds, run_model, set_thresholds
    from ddnn.train import fit, split

    cfg = _config(config, overrides, epochs=epochs, seed=seed)
    parts = split(load_data(data, grid, as_json), cfg.train)
    with progress_bar("training", cfg.train.epochs, as_json) as advance:
        result = fit(parts.train, cfg, on_epoch=lambda e, s: advance(info=_epoch_info(s)))
    cfg, model = result.config, result.model
    picked: dict[str, float] = {}
    if parts.validation is not None:
        outputs = run_model(model, parts.validation)
        points = exit_points(cfg, model.exits)
        c = cfg.calibration
        picked = pick_thresholds(outputs, points, c.rule, c.max_loss, c.confidence)
        cfg = set_thresholds(cfg, picked)
    test_report = evaluate(run_model(model, parts.test), exit_points(cfg, model.exits))
    meta = {
        "data": absolute_spec(data),
        "grid": grid,
        "train_seconds": round(result.seconds, 2),
        "final_epoch": result.history[-1],
        "calibrated_on": "validation" if picked else None,
    }
    save_model(out_path, model, cfg, meta)
    summary = {"model": str(out_path), **meta, "thresholds": picked, "test": test_report}
    if as_json:
        emit_json(summary)
        return
    out.print(
        f"trained on {len(parts.train)} samples in {result.seconds:.1f}s; thresholds picked on "
        f"{len(parts.validation) if parts.validation else 0} validation samples: {picked}"
    )
    out.print(f"wrote {out_path}; test split:")
    print_report(test_report)


def _eval_context(
    model_path: Path, data: str | None, grid: str | None, part: str, quiet: bool
) -> tuple[DDNN, DDNNConfig, dict[str, Any], MultiViewData]:
    """Load a model, its metadata and the part of a data set to evaluate it on (by default
    the test split of the data it was trained on), with progress while data is generated."""
    from ddnn.evaluate import load_for_eval

    return load_for_eval(model_path, data, grid, part, lambda s, g: load_data(s, g, quiet))


Split = Annotated[str, typer.Option(help="which part of the data: test, validation, train, all")]
LiveData = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="data SPEC whose test part the devices replay and decisions are scored on; it "
        "must fit the model (default: the data the model was trained on)",
    ),
]
OptionalData = Annotated[
    str | None,
    typer.Option("--data", help="data SPEC (default: the data the model was trained on)"),
]


@app.command("eval")
def eval_(
    model_path: ModelPath,
    data: OptionalData = None,
    threshold: Annotated[
        str | None,
        typer.Option(help="exit threshold T for every exit but the last, or local=T,edge=T"),
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
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a model (a model file, or a `ddnn export` directory: exactly what the live
    services run): accuracy per exit, overall accuracy, exit fractions, bytes."""
    from ddnn.evaluate import (
        accuracy_by_device_count,
        accuracy_each_missing,
        device_ranking,
        evaluate,
        exit_points,
        presence_mask,
        run_model,
        with_thresholds,
        write_decisions,
    )
    from ddnn.exits import cascade

    model, cfg, _, dataset = _eval_context(model_path, data, grid, part, as_json)
    thresholds = parse_thresholds(threshold, model.exits)
    points = with_thresholds(exit_points(cfg, model.exits), thresholds)
    absent = parse_devices(missing)
    present = presence_mask(len(dataset), dataset.n_views, absent)
    outputs = run_model(model, dataset, present)
    decided = cascade(points, outputs.probs)
    report = evaluate(outputs, points, decided)
    report["missing"] = absent
    if decisions is not None:
        write_decisions(decisions, outputs, points, decided)
    if each_missing:
        report["each_missing"] = accuracy_each_missing(model, dataset, points)
    if scaling:
        device_order = parse_devices_ordered(order) if order else device_ranking(model, dataset)
        report["scaling"] = accuracy_by_device_count(model, dataset, points, device_order)
    if as_json:
        emit_json(report)
        return
    print_report(report)
    if each_missing:
        print_table("each single device missing (accuracy %)", report["each_missing"])
    if scaling:
        print_table("devices added one at a time (accuracy %)", report["scaling"])


def parse_devices_ordered(text: str) -> list[int]:
    """A comma-separated list of integers, in the order given."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DDNNError(f"expected integers separated by commas like 1,0,2, got {text!r}") from None


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
    from ddnn.evaluate import exit_points, pick_thresholds, run_model
    from ddnn.evaluate import sweep as sweep_rows

    model, cfg, _, dataset = _eval_context(model_path, data, grid, part, as_json)
    points = exit_points(cfg, model.exits)
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
    if as_json:
        emit_json(document)
        return
    print_table(f"{points[0].name} exit threshold sweep ({len(dataset)} samples)", rows)
    out.print(f"picked T = {picked['threshold']} by rule {rule}")


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
        str | None, typer.Option(help="best or max_loss: search for accuracy instead")
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
    from ddnn.checkpoint import save_model
    from ddnn.evaluate import (
        evaluate,
        exit_points,
        local_fraction_for_budget,
        pick_thresholds,
        run_model,
        set_thresholds,
        thresholds_for_fractions,
    )

    if sum(x is not None for x in (exit_fraction, budget, rule)) != 1:
        raise DDNNError("give exactly one of --exit-fraction, --budget or --rule")
    if write and model_path.is_dir():
        raise DDNNError(
            f"{model_path} is a `ddnn export` directory, and exports are never changed: "
            "calibrate the model file and export it again (or pass --no-write)"
        )
    model, cfg, meta, dataset = _eval_context(model_path, data, None, part, as_json)
    points = exit_points(cfg, model.exits)
    if len(points) < 2:
        raise DDNNError("this model has a single exit: there is no threshold to calibrate")
    outputs = run_model(model, dataset)
    if rule is not None:
        c = cfg.calibration
        loss = c.max_loss if max_loss is None else max_loss
        thresholds = pick_thresholds(outputs, points, rule, loss, c.confidence)
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
    cfg = set_thresholds(cfg, thresholds)
    report = evaluate(outputs, exit_points(cfg, model.exits))
    if write:
        save_model(model_path, model, cfg, {**meta, "calibrated_on": part})
    document = {"thresholds": thresholds, "written": write, part: report}
    if as_json:
        emit_json(document)
        return
    out.print(f"thresholds {thresholds}{' written to ' + str(model_path) if write else ''}")
    print_report(report)


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
    from ddnn.train import individual_accuracy, split

    cfg = _config(config, overrides, epochs=epochs, seed=seed)
    dataset = load_data(data, grid, as_json)
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
    if as_json:
        emit_json(document)
        return
    print_table(
        f"individual accuracy % ({len(parts.test)} test samples)",
        [{f"device {d}": a for d, a in enumerate(accuracies)} | {"mean": document["mean"]}],
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
    as_json: JsonFlag = False,
) -> None:
    """The README's results table over several seeds: train, evaluate with each device
    missing and train the individual baselines once per seed (each with the real commands),
    then every measure per seed with its mean and spread, and the bars each seed meets."""
    from ddnn.results import BARS, seed_results

    chosen = parse_devices_ordered(seeds)  # a list of integers, in the order given
    document = seed_results(
        chosen, data, overrides or [], workdir, baseline, lambda line: err.print(line)
    )
    if as_json:
        emit_json(document)
        return
    measures = [k for k in document["summary"] if k != "seed"]
    rows = []
    for key in measures:
        row: dict[str, Any] = {"measure": key}
        row |= {f"seed {r['seed']}": r[key] for r in document["rows"]}
        stats = document["summary"][key]
        row |= {"mean": stats["mean"], "std": stats["std"]}
        rows.append(row)
    print_table(f"results over seeds {chosen} on {data}", rows)
    bar_rows = [
        {"bar": BARS[name]} | {f"seed {r['seed']}": r["bars"].get(name) for r in document["rows"]}
        for name in BARS
    ]
    print_table("bars", bar_rows)


@app.command("config")
def show_config(
    config: ConfigFile = None, overrides: Overrides = None, as_json: JsonFlag = False
) -> None:
    """Print the effective configuration (defaults, file, overrides) as YAML, or JSON."""
    import yaml

    document = _config(config, overrides).model_dump(mode="json")
    if as_json:
        emit_json(document)
        return
    out.print(yaml.safe_dump(document, sort_keys=False), end="")


# ------------------------------------------------------------------------- MQTT broker

bench_app = typer.Typer(help="Measure the parts the live system is built on.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

BrokerKindOption = Annotated[
    str,
    typer.Option(
        "--kind", help="auto (mosquitto if installed, else embedded), mosquitto or embedded"
    ),
]


@app.command("broker")
def broker_cmd(
    port: Annotated[int | None, typer.Option(help="port to listen on (default: free)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    kind: BrokerKindOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Run a local MQTT broker until Ctrl-C or SIGTERM, so that services can be tried on one
    machine with nothing installed by hand (mosquitto when present, else a Python broker)."""
    import signal
    import threading

    from ddnn.broker import start_broker

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = start_broker(port=port, host=host, kind=kind)
    try:
        info = {"url": broker.url, "kind": broker.kind, "protocol": broker.protocol}
        if as_json:
            emit_json(info)
        else:
            out.print(
                f"{broker.kind} broker listening on {broker.url} (clients: MQTT "
                f"{broker.protocol}); Ctrl-C stops it",
                soft_wrap=True,
            )
        while not stop.wait(0.2):
            if not broker.running:
                raise DDNNError(f"the {broker.kind} broker on {broker.url} stopped by itself")
    finally:
        broker.stop()
    if not as_json:
        err.print("broker stopped")


@bench_app.command("broker")
def bench_broker(
    broker_url: Annotated[
        str | None,
        typer.Option("--broker", help="broker URL to measure (default: start one here)"),
    ] = None,
    messages: Annotated[int, typer.Option(min=1, help="messages to relay")] = 2000,
    payload_bytes: Annotated[int, typer.Option(min=0, help="bytes per message")] = 64,
    protocol: Annotated[
        str, typer.Option(help="MQTT version the --broker speaks: 5 or 3.1.1")
    ] = "5",
    kind: BrokerKindOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Measure the raw broker ceiling: small QoS 0 messages per second from one client through
    the broker to another. No service built on that broker can beat it."""
    from ddnn.broker import broker_ceiling, start_broker
    from ddnn.mqtt import BrokerSettings

    # validated up front, also when no --broker is given (then only --protocol is checked)
    settings = BrokerSettings.from_url(broker_url or "mqtt://127.0.0.1", protocol=protocol)
    if broker_url is not None:
        result = broker_ceiling(settings, messages, payload_bytes)
        result["kind"] = "external"
    else:
        with start_broker(kind=kind) as broker:
            result = broker_ceiling(broker.settings(), messages, payload_bytes)
            result["kind"] = broker.kind
    if as_json:
        emit_json(result)
        return
    print_table(
        f"broker ceiling, {result['kind']} broker {result['broker']}",
        [{k: result[k] for k in ("messages", "received", "seconds", "messages_per_second")}],
    )


@bench_app.command("device")
def bench_device(
    artifacts: Annotated[
        Path | None,
        typer.Option(
            "--artifacts", help="a `ddnn export` directory (default: the paper's slice, untrained)"
        ),
    ] = None,
    device: Annotated[int, typer.Option(min=0, help="which device of --artifacts")] = 0,
    frames: Annotated[int, typer.Option(min=10, help="frames timed per path")] = 2000,
    as_json: JsonFlag = False,
) -> None:
    """Per-frame latency of a device slice at batch 1 (p50, p99): the torch float slice, the
    torch binarized slice in eval mode and the bit-packed slice, in one run, interleaved."""
    from ddnn.device_bench import bench_device as run_bench

    result = run_bench(artifacts, device, frames)
    if as_json:
        emit_json(result)
        return
    rows = [
        {"path": name, "p50 us": v["p50"], "p99 us": v["p99"], "packed is x faster": s}
        for name, v in result["latency_us"].items()
        for s in [result["speedup"].get(name)]
    ]
    title = f"{result['slice']}: {result['frames']} frames per path, batch 1, one thread"
    print_table(title, rows)
    out.print(
        f"packed kernel {result['kernel']}; {result['weights_bytes']} bytes of weights and "
        f"thresholds (torch float32: {result['torch_float32_bytes']}); packed outputs equal "
        f"torch's on {result['bit_exact_frames']}/{result['checked_frames']} checked frames"
    )


@app.command("export")
def export_(
    model_path: ModelPath,
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the artifacts")],
    as_json: JsonFlag = False,
) -> None:
    """Split a trained model into one artifact per role (each device, the aggregator, each
    edge, the cloud) plus a manifest with the config, thresholds and a hash per artifact."""
    from ddnn.checkpoint import load_model
    from ddnn.export import export

    model, cfg, meta = load_model(model_path)
    manifest = export(model, cfg, out_dir, meta)
    rows = [
        {"role": role, "file": a.file, "bytes": a.bytes, "sha256": a.sha256[:16]}
        for role, a in manifest.artifacts.items()
    ]
    if as_json:
        emit_json({"out": str(out_dir), "model_version": manifest.model_version, "artifacts": rows})
        return
    print_table(f"exported model version {manifest.model_version} to {out_dir}", rows)


@app.command()
def demo(
    samples: Annotated[int, typer.Option(min=1, help="samples to decide")] = 500,
    devices: Annotated[
        int | None, typer.Option(min=1, help="device processes to start (default: all)")
    ] = None,
    edge: Annotated[bool, typer.Option(help="a model with an edge tier (two edges)")] = False,
    model_path: Annotated[
        Path | None, typer.Option("--model", help="a model file (default: train a demo model)")
    ] = None,
    data: LiveData = None,
    broker: Annotated[
        str | None, typer.Option(help="use this broker URL instead of starting one")
    ] = None,
    mqtt: Annotated[str, typer.Option(help="MQTT version of --broker: 5 or 3.1.1")] = "5",
    window: Annotated[int, typer.Option(min=1, help="samples in flight at most")] = 16,
    decisions: Annotated[
        Path | None, typer.Option(help="write every decision message as JSON lines here")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The whole live system on this machine: a broker, one process per device, the
    aggregator, the edges and the cloud, driven over the test part of the model's data;
    then a summary, with the offline evaluation of the same samples beside it."""
    from ddnn.data import data_dir
    from ddnn.demo import run_demo

    report = run_demo(
        model_path,
        samples,
        devices,
        edge,
        broker,
        mqtt,
        window,
        decisions,
        data_dir() / "demo",
        lambda text: err.print(text),
        data,
    )
    if as_json:
        emit_json(report)
        return
    print_table(
        f"live DDNN: {report['samples']} samples of {report['data']}, {report['devices']} devices",
        [
            {
                "decided": report["decided"],
                "undecided": report["undecided"],
                "degraded": report["degraded"],
                "acc %": report["accuracy"],
                "offline %": report["offline_accuracy"],
                "differ": report["mismatches"],
                "bytes/device": report["bytes_per_device"],
            }
        ],
    )
    print_table("exit fraction %", [report["exit_fraction"]])
    print_table(
        "latency ms per exit tier", [{"tier": t, **v} for t, v in report["latency_ms"].items()]
    )
    b = report["broker"]
    out.print(
        f"throughput {report['throughput']} samples/s; raw {b['kind']} broker ceiling "
        f"{b['ceiling_messages_per_second']} messages/s"
    )
    out.print(
        "acc: live accuracy; offline: `ddnn eval` on the same samples with the same devices; "
        "differ: live decisions (class or exit) that differ from it"
    )


@app.command()
def faults(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="device-down, attrition, straggler, flapping, broker-restart, "
            "service-restart, bad-input or dropout (repeatable; default: all)"
        ),
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option("--model", help="a model file (default: the demo model)")
    ] = None,
    compare_model: Annotated[
        Path | None,
        typer.Option(
            help="for dropout: a model trained without device dropout (default: train one)"
        ),
    ] = None,
    data: LiveData = None,
    as_json: JsonFlag = False,
) -> None:
    """Inject faults into a live deployment (killed, paused and flapping devices, broker and
    service restarts, a rogue client) and check every sample against offline evaluation."""
    from ddnn.data import data_dir
    from ddnn.demo import demo_model
    from ddnn.faults import SCENARIOS, SCORE_DEADLINE, run_scenario

    def log(text: str) -> None:
        if not as_json:
            err.print(text)

    names = scenario or [*SCENARIOS, "dropout"]
    unknown = [n for n in names if n not in SCENARIOS and n != "dropout"]
    if unknown:
        raise DDNNError(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}, dropout")
    cache = data_dir() / "demo"
    model = model_path or demo_model(False, cache, log)
    results = []
    for name in names:
        if name == "dropout":
            baseline = compare_model or demo_model(False, cache, log, dropout=0.0)
            for label, path in (("with dropout", model), ("without dropout", baseline)):
                result = run_scenario("device-down", path, log, data=data)
                result["scenario"] = f"dropout: {label}"
                results.append(result)
        else:
            results.append(run_scenario(name, model, log, data=data))
    if as_json:
        emit_json({"results": results})
        return
    for result in results:
        rows = [
            {
                "stretch": row["scenario"],
                "samples": row["samples"],
                "decided": row["decided"],
                "undecided": row["undecided"],
                "lost": row["lost"],
                "acc %": row["accuracy"],
                "offline %": row["offline_accuracy"],
                "differ": row["mismatches"],
                "exits l/e/c": "/".join(f"{v:g}" for v in row["exit_fraction"].values()),
                "detect or recover s": row.get("recovery_s", row.get("detect_s")),
                "local p50 ms": row.get("local_p50_after_ms", row["latency_p50_ms"]),
                "cost": row.get("cost"),
            }
            for row in result["rows"]
        ]
        print_table(f"{result['scenario']} ({result['data']})", rows)
    out.print(
        "acc: live accuracy; offline: `ddnn eval` with the same devices present, on the same "
        "samples; differ: decisions that differ from it; local p50: latency of local exits "
        "(for a killed device: of samples after its last will was seen; the score deadline "
        f"is {SCORE_DEADLINE * 1000:g} ms); cost: accuracy points lost on the whole test part "
        "without that device"
    )


@app.command("inspect")
def inspect_(
    artifact: Annotated[
        Path, typer.Argument(help="a `ddnn export` directory, or a packed slice file (.bits)")
    ],
    device: Annotated[
        int, typer.Option(min=0, help="which device's slice, for an export directory")
    ] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Show a bit-packed device slice: its layers, parameter count and bytes in memory."""
    from ddnn.packed import inspect_artifact

    report = inspect_artifact(artifact, device)
    if as_json:
        emit_json(report)
        return
    rows = [
        {k: "x".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
        for row in report["layers"]
    ]
    print_table(f"{report['file']} (packed format v{report['format_version']})", rows)
    out.print(
        f"{report['parameters']} parameters; {report['weights_bytes']} bytes of weights and "
        f"thresholds in memory (as float32 in torch: {report['torch_float32_bytes']}); "
        f"file {report['file_bytes']} bytes"
    )


def _add_service_commands() -> None:
    """The live services' commands, from the `ddnn.services` entry points (pyproject.toml)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="ddnn.services"):
        app.command(ep.name)(ep.load())


_add_service_commands()


def main() -> None:
    try:
        app()
    except (DDNNError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
