"""`ddnn bench broker | device | sites | live`: figures of the parts the live system is built
on, and of the live system itself (README, Performance)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddnn.cli.app import app
from ddnn.cli.options import BrokerKindOption, JsonFlag, LiveData
from ddnn.cli.render import Rows, err, show
from ddnn.data import data_dir
from ddnn.live.broker.ceiling import broker_ceiling
from ddnn.live.broker.start import start_broker
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.ops.bench.device import bench_device as device_bench
from ddnn.ops.bench.live import bench_live as live_bench
from ddnn.ops.bench.sites import bench_sites as sites_bench

bench_app = typer.Typer(help="Measure the parts the live system is built on.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


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
    result = device_bench(artifacts, device, frames)
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
    r = sites_bench(
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
    from capture to decision, once with the devices free-running on the wall clock as
    synchronized cameras do and once started by tick messages; the live system flat out,
    with CPU seconds per sample of each service; messages per sample; and every live
    decision checked against the offline one."""
    r = live_bench(
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
    ticked = r["paced_ticked"]
    latency = [
        {"tier": t, "clock": run["clock"], **v}
        for run in (paced, ticked)
        for t, v in run["latency_ms"].items()
    ]
    show(
        r,
        as_json,
        [
            Rows(f"{r['broker']['kind']} broker, {r['window']} samples in flight", rates),
            f"live flat out is {flat['of_ceiling']} of the ceiling measured in this run",
            Rows(
                f"paced at {paced['fps']:g} samples/s: latency ms, capture to decision "
                "(devices on the wall clock; then started by ticks)",
                latency,
            ),
            f"paced: {paced['decided']} of {paced['samples']} decided on the wall clock "
            f"({paced['degraded']} degraded), {ticked['decided']} of {ticked['samples']} ticked",
            Rows("exit fraction % (paced)", [paced["exit_fraction"]]),
            Rows("CPU per sample, flat out", cpu),
            f"parity: {parity['mismatches']} of {parity['compared']} live decisions differ "
            f"from offline; {parity['decided_twice']} decided twice; "
            f"{parity['undecided']} undecided; {parity['missing']} missing",
        ],
    )
