"""The live system: `ddnn broker`, `bench`, `demo`, `faults` and `inspect`."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer

from ddnn.cli.app import app, bench_app
from ddnn.cli.options import JsonFlag, LiveData
from ddnn.cli.render import Rows, err, show
from ddnn.core.errors import DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.data import data_dir
from ddnn.live.access import access_dir, merge_access, write_access
from ddnn.live.broker import TlsFiles, broker_ceiling, start_broker
from ddnn.live.mqtt import BrokerSettings, is_loopback
from ddnn.packed.inspect import inspect_artifact

# The `ddnn` command runs every service, a device and the aggregator too, which must not
# import PyTorch: the model code (ddnn.nn) and operations (ddnn.ops, which use it) are imported
# inside the commands that need them, which also keeps `ddnn --help` instant.

BrokerKindOption = Annotated[
    str,
    typer.Option(
        "--kind", help="auto (mosquitto if installed, else embedded), mosquitto or embedded"
    ),
]


DeploymentOption = Annotated[
    str, typer.Option(help="the deployment (topics ddnn/<deployment>/<model version>/)")
]


@app.command("credentials")
def credentials_cmd(
    artifacts: Annotated[Path, typer.Option(help="a directory written by `ddnn export`")],
    deployment: DeploymentOption = "default",
    as_json: JsonFlag = False,
) -> None:
    """Write new broker accounts for one deployment of an export (`ddnn export` makes those of
    deployment "default"): a password file and ACL for the broker, and one credentials file
    per role (mode 0600) for that role's machine alone. Each role may publish only on its own
    topics and read only what its service needs; `trigger` ticks samples, `observer` reads."""
    manifest = read_manifest(artifacts)
    folder = write_access(
        artifacts, manifest.ddnn_config().model, deployment, manifest.model_version
    )
    accounts = sorted(p.stem for p in folder.glob("*.json"))
    document = {"access": str(folder), "deployment": deployment, "accounts": accounts}
    lines = [
        f"accounts of deployment {deployment!r} in {folder}: {', '.join(accounts)}",
        f"start a broker that enforces them: ddnn broker --artifacts {artifacts}"
        + ("" if deployment == "default" else f" --deployment {deployment}"),
    ]
    show(document, as_json, lines)


@app.command("broker")
def broker_cmd(
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="take only the accounts `ddnn export` / `ddnn credentials` wrote into this "
            "export for --deployment, each limited to its role's topics"
        ),
    ] = None,
    deployments: Annotated[
        list[str] | None,
        typer.Option(
            "--deployment",
            metavar="NAME",
            help="the deployment whose accounts it takes; repeat it for several sites on one "
            "broker (default: default)",
        ),
    ] = None,
    anonymous: Annotated[
        bool,
        typer.Option("--anonymous", help="take anyone instead, with any topic (this machine only)"),
    ] = False,
    port: Annotated[int | None, typer.Option(help="port to listen on (default: free)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="speak TLS only (mqtts://) with this certificate (PEM; mosquitto)"),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the --tls-cert's private key")] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            help="keep retained statuses and client sessions in this folder across restarts "
            "(mosquitto; default: nothing on disk)"
        ),
    ] = None,
    kind: BrokerKindOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Run a local MQTT broker until Ctrl-C or SIGTERM, so that services can be tried with
    nothing installed by hand (mosquitto when present, else a Python broker). It takes only
    the accounts of the deployments (sites) of an export (--artifacts, --deployment), or, on
    this machine alone, anyone (--anonymous)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if (artifacts is None) == (not anonymous):
        raise DDNNError(
            "say who may connect: --artifacts DIR (the accounts of an export, each limited to "
            "its role's topics) or --anonymous (anyone, anything; this machine only)"
        )
    if anonymous and not is_loopback(host):
        raise DDNNError(
            f"refusing to take anonymous clients on {host}: anyone who could reach it could "
            "publish any message as any role. Use --artifacts DIR (per-role accounts), with "
            "--tls-cert and --tls-key (README, Security)"
        )
    folders = []
    for deployment in deployments or ["default"]:
        folder = access_dir(artifacts, deployment) if artifacts is not None else None
        if folder is not None and not folder.is_dir():
            raise DDNNError(
                f"{artifacts} has no accounts for deployment {deployment!r}: "
                f"run `ddnn credentials --artifacts {artifacts} --deployment {deployment}`"
            )
        folders += [folder] if folder is not None else []
    merged = tempfile.TemporaryDirectory(prefix="ddnn-access-")  # several sites' accounts
    access = None if not folders else folders[0]
    if len(folders) > 1:
        access = merge_access(folders, Path(merged.name))
    if (tls_cert is None) != (tls_key is None):
        raise DDNNError("--tls-cert and --tls-key go together")
    tls = None if tls_cert is None or tls_key is None else TlsFiles(tls_cert, tls_key)
    if not is_loopback(host) and tls is None:
        err.print(
            f"WARNING: listening on {host} over plain MQTT: passwords and messages travel in "
            "clear text. Give it --tls-cert and --tls-key on any network you do not trust."
        )
    broker = start_broker(port=port, host=host, kind=kind, access=access, tls=tls, state=state)
    if state is not None and broker.kind != "mosquitto":
        err.print(
            f"WARNING: the {broker.kind} broker keeps nothing across restarts: --state {state} "
            "is ignored (install mosquitto)"
        )
    try:
        info = {
            "url": broker.url,
            "kind": broker.kind,
            "protocol": broker.protocol,
            "access": str(access) if access is not None else None,
        }
        who = f"the accounts in {access}" if access is not None else "anonymous clients"
        listening = (
            f"{broker.kind} broker listening on {broker.url} (clients: MQTT {broker.protocol}; "
            f"{who}); Ctrl-C stops it"
        )
        show(info, as_json, [listening])
        while not stop.wait(0.2):
            if not broker.running:
                raise DDNNError(f"the {broker.kind} broker on {broker.url} stopped by itself")
    finally:
        broker.stop()
        merged.cleanup()
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
    # validated up front, also when no --broker is given (then only --protocol is checked)
    settings = BrokerSettings.from_url(broker_url or "mqtt://127.0.0.1", protocol=protocol)
    if broker_url is not None:
        result = broker_ceiling(settings, messages, payload_bytes)
        result["kind"] = "external"
    else:
        with start_broker(kind=kind) as broker:
            result = broker_ceiling(broker.settings(), messages, payload_bytes)
            result["kind"] = broker.kind
    row = {k: result[k] for k in ("messages", "received", "seconds", "messages_per_second")}
    show(
        result,
        as_json,
        [Rows(f"broker ceiling, {result['kind']} broker {result['broker']}", [row])],
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
    from ddnn.ops.device_bench import bench_device as run_bench

    result = run_bench(artifacts, device, frames)
    rows = [
        {"path": name, "p50 us": v["p50"], "p99 us": v["p99"], "packed is x faster": s}
        for name, v in result["latency_us"].items()
        for s in [result["speedup"].get(name)]
    ]
    title = f"{result['slice']}: {result['frames']} frames per path, batch 1, one thread"
    summary = (
        f"packed kernel {result['kernel']}; {result['weights_bytes']} bytes of weights and "
        f"thresholds (torch float32: {result['torch_float32_bytes']}); packed outputs equal "
        f"torch's on {result['bit_exact_frames']}/{result['checked_frames']} checked frames"
    )
    show(result, as_json, [Rows(title, rows), summary])


@bench_app.command("sites")
def bench_sites(
    sites: Annotated[int, typer.Option(min=1, max=100, help="sites (deployments) to run")] = 10,
    fps: Annotated[
        float, typer.Option(min=0.1, max=1000, help="samples per second at each site")
    ] = 5.0,
    seconds: Annotated[float, typer.Option(min=1, help="length of the run")] = 20.0,
    devices: Annotated[
        int | None, typer.Option(min=1, help="device processes per site (default: all)")
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option("--model", help="a model file (default: the demo model)")
    ] = None,
    data: LiveData = None,
    kind: BrokerKindOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Many sites on one broker: each site a deployment with its own accounts, devices,
    aggregator and cloud, all ticked at once at --fps; decided/s and latency per site, and
    the sites that starved. 10 sites of 6 cameras start 80 processes (about 12 GB)."""
    from ddnn.ops.sites import bench_sites as run_bench

    r = run_bench(
        model_path,
        sites,
        fps,
        seconds,
        devices,
        kind,
        data_dir() / "demo",
        lambda text: err.print(text),
        data,
    )
    rows = [
        {
            "site": s["site"],
            "decided": f"{s['decided']}/{s['ticked']}",
            "per s": s["decided_per_second"],
            **{f"{t} ms": f"{v['p50']}/{v['p99']}" for t, v in s["latency_ms"].items()},
            "degraded": s["degraded"],
            "differ": s["mismatches"],
            "starved": "yes" if s["starved"] else "",
        }
        for s in r["per_site"]
    ]
    show(
        r,
        as_json,
        [
            Rows(
                f"{r['sites']} sites x {r['devices_per_site']} devices at {r['fps']:g} "
                f"samples/s on one {r['broker']['kind']} broker ({r['processes']} processes); "
                "latency p50/p99, capture to decision",
                rows,
            ),
            f"{r['decided_per_second']} decided/s in all; {r['cpu_seconds_per_sample']} CPU s "
            "per sample, all services and the broker; "
            + (f"starved: {', '.join(r['starved'])}" if r["starved"] else "no site starved"),
        ],
    )


@bench_app.command("live")
def bench_live(
    model_path: Annotated[
        Path | None, typer.Option("--model", help="a model file (default: the demo model)")
    ] = None,
    data: LiveData = None,
    samples: Annotated[
        int,
        typer.Option(
            min=10,
            help="samples of the live flat-out run (the pattern runs over every sample of "
            "the live run: warm-up, paced and flat out)",
        ),
    ] = 1000,
    window: Annotated[int, typer.Option(min=1, help="samples in flight when flat out")] = 16,
    fps: Annotated[
        float, typer.Option(min=0.1, max=1000, help="samples per second of the paced run")
    ] = 30.0,
    seconds: Annotated[float, typer.Option(min=0.5, help="length of the paced run")] = 10.0,
    kind: BrokerKindOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """The live system against the ceiling of its own message pattern, in one run on one
    broker: the bare pattern (same roles, topics and message sizes, no model, QoS 0) flat
    out; the live system paced like cameras (`--fps`), with decision latency per exit tier
    from capture to decision; the live system flat out, with CPU seconds per sample of each
    service; messages per sample; and every live decision checked against the offline one."""
    from ddnn.ops.live_bench import bench_live as run_bench

    r = run_bench(
        model_path,
        samples,
        window,
        fps,
        seconds,
        kind,
        data_dir() / "demo",
        lambda text: err.print(text),
        data,
    )
    ceiling, flat, paced, parity = r["ceiling"], r["flat_out"], r["paced"], r["parity"]
    rates = [
        {
            "run": "bare pattern (ceiling)",
            "samples/s": ceiling["samples_per_second"],
            "messages/sample": ceiling["messages_per_sample"],
        },
        {
            "run": "live, flat out",
            "samples/s": flat["samples_per_second"],
            "messages/sample": r["messages_per_sample"],
        },
    ]
    cpu = [
        {"service": name, "CPU ms/sample": round(1000 * s, 3)}
        for name, s in flat["cpu_seconds_per_sample"].items()
    ]
    latency = [{"tier": t, **v} for t, v in paced["latency_ms"].items()]
    show(
        r,
        as_json,
        [
            Rows(f"{r['broker']['kind']} broker, {r['window']} samples in flight", rates),
            f"live flat out is {flat['of_ceiling']} of the ceiling measured in this run",
            Rows(f"paced at {paced['fps']:g} samples/s: latency ms, capture to decision", latency),
            Rows("exit fraction % (paced)", [paced["exit_fraction"]]),
            Rows("CPU per sample, flat out", cpu),
            f"parity: {parity['mismatches']} of {parity['compared']} live decisions differ "
            f"from offline; {parity['decided_twice']} decided twice; "
            f"{parity['undecided']} undecided; {parity['missing']} missing",
        ],
    )


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
    as_json: JsonFlag = False,
) -> None:
    """The whole live system on this machine: a broker, one process per device, the
    aggregator, the edges and the cloud, driven over the test part of the model's data;
    then a summary, with the offline evaluation of the same samples beside it."""
    from ddnn.ops.demo import run_demo

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
        bridge,
        cloud_replicas,
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
            f"throughput {report['throughput']} samples/s; raw {b['kind']} broker ceiling "
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
            ),
            "acc: live accuracy; offline: `ddnn eval` on the same samples with the same devices; "
            "differ: live decisions (class or exit) that differ from it",
        ],
    )


@app.command()
def faults(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="device-down, attrition, straggler, flapping, broker-restart, "
            "service-restart, bad-input, replay, forgery, fuzz, flood or dropout "
            "(repeatable, or comma-separated; default: all)"
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="send less in the hostile scenarios (fuzz: 100 payloads per topic instead "
            "of 10,000, one round of retained garbage instead of 3; flood: 5 s at 100/s "
            "instead of 60 s at 250/s; replay: 50 samples instead of 1,000)",
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
    as_json: JsonFlag = False,
) -> None:
    """Inject faults into a live deployment (killed, paused and flapping devices, broker and
    service restarts, compromised accounts sending garbage, every account forging every other
    role's messages, old samples replayed, fuzzed payloads on every topic, floods) and check
    every sample against offline evaluation. Each service logs in with its own account of a
    broker that enforces them."""
    from ddnn.ops.demo import demo_model
    from ddnn.ops.faults import SCENARIOS, SCORE_DEADLINE, Sizes, run_faults

    def log(text: str) -> None:
        if not as_json:
            err.print(text)

    names = [n.strip() for s in scenario or [] for n in s.split(",")] or [*SCENARIOS, "dropout"]
    cache = data_dir() / "demo"
    model = model_path or demo_model(False, cache, log)
    report = run_faults(
        names,
        model,
        lambda: compare_model or demo_model(False, cache, log, dropout=0.0),
        log,
        data=data,
        sizes=Sizes.quick() if quick else Sizes(),
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
        hostile = [row for row in result["rows"] if "service_deaths" in row]
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
        "without that device"
    )
    rejected = [
        f"{d['model']}: messages rejected by "
        + (", ".join(f"{r} {sum(n.values())}" for r, n in d["rejected"].items()) or "none")
        for d in report["deployments"]
    ]
    show(report, as_json, [*tables, legend, *rejected])


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
    report = inspect_artifact(artifact, device)
    rows = [
        {k: "x".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
        for row in report["layers"]
    ]
    summary = (
        f"{report['parameters']} parameters; {report['weights_bytes']} bytes of weights and "
        f"thresholds in memory (as float32 in torch: {report['torch_float32_bytes']}); "
        f"file {report['file_bytes']} bytes"
    )
    title = f"{report['file']} (packed format v{report['format_version']})"
    show(report, as_json, [Rows(title, rows), summary])
