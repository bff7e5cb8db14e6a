"""The live system: `ddnn demo` and `faults`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddnn.cli.app import app
from ddnn.cli.options import BrokerKindOption, JsonFlag, LiveData
from ddnn.cli.render import Rows, err, show
from ddnn.core.errors import DDNNError
from ddnn.core.files import make_folder, writable_file
from ddnn.data import data_dir
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service_cli import Durability, DurabilityOption
from ddnn.nn.checkpoint import load_model
from ddnn.ops.demo import demo_model, run_demo
from ddnn.ops.deploy import Capturing
from ddnn.ops.faults.harness import SCORE_DEADLINE, Sizes
from ddnn.ops.faults.suite import SCENARIOS, run_faults


def _check_outputs(decisions: Path | None, plot: Path | None) -> None:
    """Refuse a --decisions file or --plot folder that cannot be written before the run
    that fills it, not after it."""
    if decisions is not None:
        writable_file(decisions, "decisions file", stream=True)
    if plot is not None:
        make_folder(plot, "--plot folder")


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
    quick_ack: Annotated[
        bool,
        typer.Option(
            help="--broker leaves Nagle's algorithm on (rumqttd): every client acknowledges "
            "its packets at once"
        ),
    ] = False,
    kind: BrokerKindOption = "auto",
    window: Annotated[int, typer.Option(min=1, help="samples in flight at most")] = 16,
    decisions: Annotated[
        Path | None, typer.Option(help="write every decision message as JSON lines here")
    ] = None,
    bridge: Annotated[
        bool,
        typer.Option(
            help="the cloud on a broker of its own (TLS), joined to the site's broker by a "
            "mosquitto bridge that carries only what the cloud takes and answers"
        ),
    ] = False,
    cloud_replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="run the cloud as this many replicas sharing its work through an MQTT 5 "
            "shared subscription (the aggregator gathers each sample's maps into one job); "
            "needs mosquitto",
        ),
    ] = 1,
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="also draw a histogram of each exit tier's latency, p50 and p99 marked, into "
            "DIR/demo-latency.png",
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            max=1000,
            help="the devices free-run on the wall clock at this many frames per second, as "
            "cameras on synchronized clocks do, and the demo decides --samples consecutive "
            "frames (default: samples are ticked as fast as --window allows)",
        ),
    ] = None,
    durability: DurabilityOption = Durability.none,
    device_runtime: Annotated[
        str,
        typer.Option(
            help="python: the devices are `ddnn device` processes; c: C processes built here "
            "from the export (devices/c/: needs gcc, libmosquitto-dev, libmsgpack-dev), run "
            "after the same samples with Python devices, throughput and CPU per sample of "
            "both side by side (every device replays its frames rounded to uint8)"
        ),
    ] = "python",
    capture: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="also capture the hard examples (escalated, degraded, abstained or unsure "
            "at the default entropy level) into DIR: `ddnn capture` beside the others, every "
            "device with --capture; DIR then holds cam<i>/<sample>.png, labels.csv (for `ddnn "
            "data import`) and captured.npz",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The whole live system on this machine: a broker, one process per device, the
    aggregator, the edges and the cloud, over the test part of the model's data (ticked
    in lockstep, or with `--fps` free-running like cameras); then a summary, with the
    offline evaluation of the same samples beside it."""
    if broker is None and (mqtt != "5" or quick_ack):
        raise DDNNError("--mqtt and --quick-ack describe the broker of --broker")
    _check_outputs(decisions, plot)
    if capture is not None:
        make_folder(capture, "--capture folder")
    external = (
        None
        if broker is None
        else BrokerSettings.from_url(broker, protocol=mqtt, quick_ack=quick_ack)
    )
    report = run_demo(
        model_path,
        samples,
        devices,
        edge,
        external,
        window,
        decisions,
        data_dir() / "demo",
        lambda text: err.print(text),
        data,
        bridge,
        cloud_replicas,
        plot,
        fps,
        kind,
        durability,
        device_runtime,
        None if capture is None else Capturing(capture),
    )
    b = report["broker"]
    show(
        report,
        as_json,
        [
            Rows(
                f"live DDNN: {report['samples']} samples of {report['data']}, "
                f"{report['devices']} devices",
                [
                    {
                        "decided": report["decided"],
                        "undecided": report["undecided"],
                        "missing": report["decisions_missing"],
                        "twice": report["decisions_twice"],
                        "repeated": report["decisions_repeated"],
                        "degraded": report["degraded"],
                        "acc %": report["accuracy"],
                        "offline %": report["offline_accuracy"],
                        "differ": report["mismatches"],
                        "bytes/device": report["bytes_per_device"],
                    }
                ],
            ),
            Rows("exit fraction %", [report["exit_fraction"]]),
            Rows(
                "latency ms per exit tier",
                [{"tier": t, **v} for t, v in report["latency_ms"].items()],
            ),
            f"throughput {report['throughput']} samples/s"
            + (f" (cameras at {fps:g} frames/s)" if fps else "")
            + f"; raw {b['kind']} broker ceiling "
            f"{b['ceiling_messages_per_second']} messages/s"
            + (
                f"; the cloud on its own broker {b['cloud_url']}, bridged to the site's"
                if b.get("bridged")
                else ""
            )
            + (
                f"; the cloud as {report['cloud_replicas']} replicas sharing jobs"
                if report["cloud_replicas"] > 1
                else ""
            )
            + (
                f"; {b['kind']} checks the accounts but not their topic grants (mosquitto does)"
                if b["enforces_grants"] is False
                else ""
            ),
            "acc: live accuracy; offline: `ddnn eval` on the same samples with the same devices; "
            "differ: live decisions (class or exit) that differ from it",
            *runtimes(report),
            *captures(report),
            *plotted(report, as_json),
        ],
    )


def captures(report: dict[str, Any]) -> list[Rows | str]:
    """What the capture of hard examples came to, where the demo ran it."""
    if "capture" not in report:
        return []
    c = report["capture"]
    n = c["counters"]
    dropped = "/".join(str(n.get(f"dropped_{why}")) for why in ("rate", "pending", "stopped"))
    row = {
        "hard": n.get("hard"),
        "captured": n.get("captured_samples"),
        "frames": n.get("captured_frames"),
        "missing": n.get("frames_missing"),
        "MB": round(n.get("bytes_written", 0) / 1e6, 2),
        "dropped r/p/s": dropped,
        "quota": "reached" if n.get("quota_reached") else "-",
        "refused": sum(c["rejected"].values()),
    }
    return [
        Rows(
            f"hard examples captured into {c['folder']} ({c['hard_decisions']} decisions "
            f"hard by the driver's count, entropy above {c['entropy']:g})",
            [row],
        ),
        "hard: as the capture counted them; missing: frames that did not come; dropped: over "
        "the rate, the samples waiting, after capture stopped; label them in "
        f"{c['folder']}/labels.csv, then `ddnn data import --images {c['folder']} --labels "
        f"{c['folder']}/labels.csv --out FILE`",
    ]


def runtimes(report: dict[str, Any]) -> list[Rows]:
    """The Python and the C devices' runs side by side, where the demo ran both."""
    if "device_runtimes" not in report:
        return []
    rows = [
        {
            "devices": runtime,
            "samples/s": r["samples_per_second"],
            "missing": r["decisions_missing"],
            "twice": r["decisions_twice"],
            "differ": r["mismatches"],
            "device CPU": micro(r["device_cpu_seconds_per_sample"]),
            **{
                f"{name} CPU": micro(v)
                for name, v in r["cpu_seconds_per_sample"].items()
                if not name.startswith("device-")
            },
        }
        for runtime, r in report["device_runtimes"].items()
    ]
    return [
        Rows("devices in Python and in C, the same samples on the same broker", rows),
        "CPU: microseconds of CPU per decided sample (a device: the mean of the devices)",
    ]


def micro(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)


@app.command()
def faults(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="device-down, attrition, straggler, flapping, broker-restart, "
            "service-restart, aggregator-kill-storm, broker-outage, bad-input, replay, "
            "forgery, fuzz, flood, byzantine-device, device-flood or dropout "
            "(repeatable, or comma-separated; default: all)"
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="send less, and for less long (fuzz: 100 payloads per topic instead "
            "of 10,000, one round of retained garbage instead of 3; flood: 5 s at 100/s "
            "instead of 60 s at 250/s; replay: 50 samples instead of 1,000; the kill storm: "
            "3 kills in 150 samples instead of 20 in 3,000; the outage: 3 s instead of 30)",
        ),
    ] = False,
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
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="also draw each scenario over time into DIR/faults-<scenario>.png: accuracy "
            "per time bin beside offline evaluation's, latency and its p50, the faults marked",
        ),
    ] = None,
    kind: BrokerKindOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Inject faults into a live deployment (killed, paused and flapping devices, broker and
    service restarts, compromised accounts sending garbage, every account forging every other
    role's messages, old samples replayed, fuzzed payloads on every topic, floods) and check
    every sample against offline evaluation. Each service logs in with its own account of a
    broker that enforces them."""

    def log(text: str) -> None:
        if not as_json:
            err.print(text)

    names = [n.strip() for s in scenario or [] for n in s.split(",")] or [*SCENARIOS, "dropout"]
    _check_outputs(None, plot)
    if compare_model is not None:  # refused now, not after the scenarios that run first
        load_model(compare_model)
    cache = data_dir() / "demo"
    model = model_path or demo_model(False, cache, log)
    report = run_faults(
        names,
        model,
        lambda: compare_model or demo_model(False, cache, log, dropout=0.0),
        log,
        data=data,
        sizes=Sizes.quick() if quick else Sizes(),
        plot=plot,
        kind=kind,
    )
    results = report["results"]
    tables = []
    for result in results:
        rows = [
            {
                "stretch": row["scenario"],
                "samples": row["samples"],
                "decided": row["decided"],
                "undecided": row["undecided"],
                "lost": row["lost"],
                "seen miss/twice/again": "/".join(
                    str(row[k])
                    for k in ("decisions_missing", "decisions_twice", "decisions_repeated")
                ),
                "deaths": row["service_deaths"],
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
        tables.append(Rows(f"{result['scenario']} ({result['data']})", rows))
        hostile = [row for row in result["rows"] if "reason_keys" in row]  # `health`'s
        if hostile:
            keys = ("service_deaths", "reason_keys", "max_rss_mb", "max_anon_mb", "rss_growth_mb")
            keys += ("forged_sent", "forged_denied", "forged_delivered", "in_time_pct")
            shown = [{"stretch": r["scenario"], **{k: r.get(k) for k in keys}} for r in hostile]
            tables.append(Rows(f"{result['scenario']}: what hostile input did", shown))
    legend = (
        "acc: live accuracy; offline: `ddnn eval` with the same devices present, on the same "
        "samples; differ: decisions that differ from it; local p50: latency of local exits "
        "(for a killed device: of samples after its last will was seen; the score deadline "
        f"is {SCORE_DEADLINE * 1000:g} ms); cost: accuracy points lost on the whole test part "
        "without that device; seen miss/twice/again: what an observer apart from the driver "
        "saw: samples with no decision, decisions with another content than the sample's "
        "first, the same again (a redelivery); deaths: services that exited unasked"
    )
    rejected = [
        f"{d['model']}: messages rejected by "
        + (", ".join(f"{r} {sum(n.values())}" for r, n in d["rejected"].items()) or "none")
        for d in report["deployments"]
    ]
    show(report, as_json, [*tables, legend, *rejected, *plotted(report, as_json)])


def plotted(report: dict[str, Any], as_json: bool) -> list[str]:
    """The lines that name the figures a run drew (`--plot`): for the output a person reads,
    or, with --json, on stderr at once, since stdout holds the JSON document alone (its
    `plots` lists them too)."""
    lines = [f"figure: {path}" for path in report.get("plots", [])]
    if not as_json:
        return lines
    for line in lines:
        err.print(line)
    return []
