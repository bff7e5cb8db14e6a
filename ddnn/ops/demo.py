"""`ddnn demo`: the whole live system on one machine, with one command.

Trains a small model unless one is given (cached), exports it, starts a broker unless one is
given, measures the broker's raw ceiling, starts one process per role exactly as an operator
would (`python -m ddnn <role> ...`), drives the devices in lockstep with `tick` messages over
the test part, collects every decision, shuts everything down and summarizes: accuracy, exit
fractions, bytes per device, latency per exit tier, throughput next to the broker ceiling.
The devices replay the same part that the live and offline accuracy are scored on.

Design: docs/design/demo.md (the steps in full, and why the replayed part must match).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ddnn.core.config import load_config
from ddnn.core.errors import DDNNError
from ddnn.core.roles import AGGREGATOR, CAPTURE, CLOUD, Role
from ddnn.live.access import BRIDGE, TRIGGER, bridged, login
from ddnn.live.broker.ceiling import broker_ceiling
from ddnn.live.broker.mosquitto import Bridge
from ddnn.live.broker.running import RunningBroker, TlsFiles
from ddnn.live.broker.start import find_mosquitto, start_broker
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service_cli import Durability
from ddnn.live.wire import Topics
from ddnn.nn.checkpoint import load_model
from ddnn.ops.certs import local_certs
from ddnn.ops.deploy import Capturing, Deployment, Prepared, deployment, prepare
from ddnn.ops.fleet import CpuClock, Launch, Reference, python_m_ddnn, summarize

DEMO_EPOCHS = 30
STDERR_FD = 2  # the process's own stderr, whatever sys.stderr has been replaced with
EDGE_GROUPS = "[[0,1,2],[3,4,5]]"
DEVICE_RUNTIMES = ("python", "c")
DRAIN = 2.0  # seconds of statuses after the services stopped: the capture's final counters


def demo_model(
    edge: bool, cache: Path, log: Callable[[str], None], dropout: float | None = None
) -> Path:
    """The cached demo model, trained on the default synthetic set on first use
    (`dropout`: a device dropout other than the config's, for comparisons). The file name
    holds a hash of the config it is trained with, so that a release with other defaults
    trains a new one instead of reusing a stale one."""
    overrides = [f"train.epochs={DEMO_EPOCHS}"]
    if edge:
        overrides.append(f"model.edge={{groups: {EDGE_GROUPS}}}")
    if dropout is not None:
        overrides.append(f"train.device_dropout={dropout}")
    digest = hashlib.sha256(load_config(None, overrides).model_dump_json().encode()).hexdigest()
    variant = "-nodropout" if dropout == 0 else "" if dropout is None else f"-dropout{dropout}"
    path = cache / f"demo-{'edge' if edge else 'local-cloud'}{variant}-{digest[:10]}.pt"
    if path.exists():
        return path
    log(f"training a demo model ({DEMO_EPOCHS} epochs) into {path}; later demos reuse it")
    command = [sys.executable, "-m", "ddnn", "train", "--out", str(path)]
    for override in overrides:
        command += ["--set", override]
    # Training's table is progress here, not the caller's output: it goes to stderr, so that
    # the stdout of `ddnn demo --json` / `ddnn faults --json` holds their JSON alone.
    if subprocess.run(command, stdout=STDERR_FD).returncode != 0:
        raise DDNNError("training the demo model failed (see above)")
    return path


def _bridged(
    prepared: Prepared, workdir: Path
) -> tuple[RunningBroker, RunningBroker, dict[Role, list[str]]]:
    """The cloud's broker (TLS with throwaway certificates, the deployment's accounts), the
    site's broker bridged to it (logged in as the `bridge` account), and the options that
    point the cloud service at its own broker."""
    if find_mosquitto() is None:
        raise DDNNError("--bridge joins two mosquitto brokers: install the mosquitto package")
    certs = local_certs(workdir / "tls")
    cloud_broker = start_broker(
        kind="mosquitto", access=prepared.access, tls=TlsFiles(certs.cert, certs.key)
    )
    try:
        model = prepared.manifest.ddnn_config().model
        to_site, to_cloud = bridged(model, Topics(prepared.name, prepared.manifest.model_version))
        remote = cloud_broker.settings(BRIDGE).model_copy(update={"tls_ca": certs.ca})
        site = start_broker(
            kind="mosquitto", access=prepared.access, bridge=Bridge(remote, to_cloud, to_site)
        )
    except BaseException:
        cloud_broker.stop()
        raise
    return cloud_broker, site, {CLOUD: ["--broker", cloud_broker.url, "--tls-ca", str(certs.ca)]}


def replayed(samples: int, size: int) -> str:
    """How `samples` samples cover a test part of `size`: the devices replay it in a cycle
    (sample k is test sample k % size), which a user should hear of when it repeats."""
    part = f"{size} sample{'s' if size != 1 else ''}"
    if samples <= size:
        return part
    return f"{part}, each replayed in turn: {samples / size:.3g} passes"


def run_demo(
    model: Path | None,
    samples: int,
    devices: int | None,
    edge: bool,
    external: BrokerSettings | None,
    window: int,
    decisions_path: Path | None,
    cache: Path,
    log: Callable[[str], None],
    data: str | None = None,
    bridge: bool = False,
    cloud_replicas: int = 1,
    plot: Path | None = None,
    fps: float | None = None,
    kind: str = "auto",
    durability: Durability = Durability.none,
    device_runtime: str = "python",
    capture: Capturing | None = None,
) -> dict[str, Any]:
    """Run the live system on `model` (default: the cached demo model) over `samples` test
    samples of `data` (a SPEC; default: the data the model was trained on); the summary.
    `bridge`: the cloud on a broker of its own (TLS, its accounts), joined to the site's
    broker (devices, aggregator, edges) by a mosquitto bridge that carries only the offload
    requests, the cloud's inputs and its answers (and its status). `cloud_replicas` over 1:
    the cloud as that many replicas behind an MQTT 5 shared subscription, fed whole jobs by
    the aggregator (cloud/service.py). `plot`: a folder for a histogram of the latency of
    each exit tier (demo-latency.png, drawn once the services have stopped), listed in
    `plots`. `fps`: the devices free-run on the wall clock at that rate, as synchronized
    cameras do (`on_wall_clock`), and the demo decides `samples` consecutive frames
    instead of ticking samples as fast as `window` allows. `external`: the settings of a
    broker to use instead of starting one; `kind`: the broker to start otherwise
    (`start_broker`'s kinds); `durability`: the aggregator's (`ddnn aggregator --help`).
    `device_runtime` "c": the devices are C processes (devices/c/, built here from the
    export by `ddnn codegen` and make), after a run of the same samples with Python devices
    on the same broker; every device of both replays the frames rounded to uint8, as the
    offline reference decides them, and `device_runtimes` holds each run's throughput and
    CPU seconds per sample of each process. `capture`: the hard examples are captured
    (`ddnn capture` and the devices' `--capture`), and `capture` in the summary says what
    that came to (`captured`)."""
    path = model if model is not None else demo_model(edge, cache, log)
    net, cfg, meta = load_model(path)
    n = cfg.model.n_devices
    k = n if devices is None else devices
    if not 1 <= k <= n:
        raise DDNNError(f"--devices must be 1..{n} for this model, got {k}")
    if cfg.model.local is None:
        raise DDNNError("the live system needs a model with a local exit")
    if cloud_replicas > 1 and cfg.model.cloud is None:
        raise DDNNError("--cloud-replicas needs a model with a cloud")
    if kind != "auto" and (external is not None or bridge):
        raise DDNNError("--kind picks the broker the demo starts: not with --broker or --bridge")
    if device_runtime not in DEVICE_RUNTIMES:
        raise DDNNError(f"--device-runtime must be python or c, got {device_runtime!r}")
    in_c = device_runtime == "c"
    if in_c and fps is not None:
        raise DDNNError("--device-runtime c: C devices capture on ticks only, not with --fps")
    if in_c and capture is not None:
        raise DDNNError("--device-runtime c: C devices do not capture hard examples (--capture)")
    with tempfile.TemporaryDirectory(prefix="ddnn-demo-") as tmp:
        name = f"demo-{os.getpid()}"
        # refuses data that misfits
        prepared = prepare(
            net, cfg, meta, Path(tmp), name, data, camera=in_c, capture=capture is not None
        )
        launch, beside = None, None
        device_options: dict[Role, list[str]] = {}
        if in_c:
            log(f"building {k} C devices (ddnn codegen, make)")
            launch, device_options = c_devices(prepared, Path(tmp) / "c", k)
        broker = cloud_broker = None
        extra: dict[Role, list[str]] = {}
        if bridge:
            if external is not None or cfg.model.cloud is None:
                raise DDNNError("--bridge starts both brokers, for a model with a cloud")
            cloud_broker, broker, extra = _bridged(prepared, Path(tmp))
            settings = broker.settings()
        elif external is None:
            # its accounts are all processes of this demo: no grant needs enforcing
            broker = start_broker(kind=kind, access=prepared.access, grants=False)
            settings = broker.settings()
        else:
            settings = external
        extra[AGGREGATOR] = [*extra.get(AGGREGATOR, []), "--durability", durability.value]
        if cloud_replicas > 1 and settings.protocol != "5":
            if broker is not None:
                broker.stop()
            raise DDNNError(
                "--cloud-replicas shares the cloud's jobs through an MQTT 5 shared "
                f"subscription; the broker speaks MQTT {settings.protocol} (the embedded "
                "broker does: install mosquitto)"
            )
        try:
            # through the trigger account's own probe topics: the one account it has here
            trigger = login(settings, prepared.access, TRIGGER)
            bench = f"{Topics(name, prepared.manifest.model_version).hello}/{TRIGGER}/ceiling"
            ceiling = broker_ceiling(trigger, messages=2000, topic=bench)
            extra = joined(extra, device_options)
            if in_c:
                log(f"first with Python devices: {samples} samples, for comparison")
                beside = python_beside(
                    prepared,
                    settings,
                    Path(tmp) / "python",
                    k,
                    extra,
                    cloud_replicas,
                    window,
                    samples,
                )
                log("then with C devices")
            with deployment(
                prepared,
                settings,
                Path(tmp),
                devices=k,
                extra=extra,
                cloud_replicas=cloud_replicas,
                fps=fps,
                launch=launch,
                capture=capture,
                drain=0.0 if capture is None else DRAIN,
            ) as running:
                driver, reference = running.driver, running.reference
                how = f"at {fps:g} frames/s on the wall clock" if fps else "driving"
                log(
                    f"{len(running.roles)} services online; {how} {samples} samples of the "
                    f"test part of {reference.spec} ({replayed(samples, len(reference.labels))})"
                )
                if fps is None:
                    ids, seconds, cpu = driven(running, samples, window)
                else:  # the cameras' rate is the throughput: the slots' span, not the wait
                    ids = driver.listen(fps, samples)
                    seconds = samples / fps
                if capture is not None:
                    seen = (driver.decisions[k] for k in ids if k in driver.decisions)
                    hard = capture.hard(seen, cfg.model)
                    if not capture.settle(driver, hard):
                        log("the capture did not take in every hard decision in time")
        finally:
            for started in (broker, cloud_broker):
                if started is not None:
                    started.stop()
    decisions = {k: driver.decisions[k] for k in ids if k in driver.decisions}
    anomalies, manifest = driver.anomalies, running.manifest
    report = summarize(decisions, reference.labels, samples, seconds, **driver.repeats(ids))
    report.update(reference.compare(decisions.values()))
    report["data"] = reference.spec
    report["anomalies"] = dict(anomalies)
    report["devices"] = k
    report["clock"] = (
        {"kind": "tick", "window": window} if fps is None else {"kind": "wall", "fps": fps}
    )
    report["cloud_replicas"] = cloud_replicas if cfg.model.cloud is not None else 0
    report["model_version"] = manifest.model_version
    report["broker"] = {
        "url": settings.url,
        "kind": broker.kind if broker is not None else "external",
        "enforces_grants": broker.enforces_grants if broker is not None else None,
        "ceiling_messages_per_second": ceiling["messages_per_second"],
    }
    if cloud_broker is not None:
        report["broker"]["cloud_url"] = cloud_broker.url
        report["broker"]["bridged"] = True
    report["clean_exits"] = all(code == 0 for code in running.codes.values())
    report["device_runtime"] = device_runtime
    if capture is not None:
        report["capture"] = captured(running, capture, hard)
    if beside is not None:
        report["device_runtimes"] = {
            "python": beside,
            "c": runtime_figures(decisions, reference, samples, seconds, cpu, driver.repeats(ids)),
        }
    if plot is not None:
        from ddnn.ops.live_plots import latency_histograms

        title = f"latency per exit tier\n{samples} samples of {reference.spec}, {k} devices"
        drawn = latency_histograms(decisions.values(), plot / "demo-latency.png", title)
        report["plots"] = [str(drawn)]
    if decisions_path is not None:
        with decisions_path.open("w") as f:
            for sample in sorted(decisions):
                f.write(json.dumps(decisions[sample].model_dump(exclude={"v", "kind"})) + "\n")
    return report


def captured(running: Deployment, capture: Capturing, hard: int) -> dict[str, Any]:
    """What the capture of hard examples came to: the `hard` decisions as the driver saw
    them (the rule applied to each), and the capture service's final counters and refusals."""
    status = running.driver.status.get(CAPTURE)
    return {
        "folder": str(capture.out),
        "entropy": capture.entropy,
        "hard_decisions": hard,
        "counters": {} if status is None else dict(status.counters),
        "rejected": {} if status is None else dict(status.rejected),
    }


def joined(*options: dict[Role, list[str]]) -> dict[Role, list[str]]:
    """Per-role options, those of later mappings after the earlier ones' (the last of an
    option given twice wins)."""
    out: dict[Role, list[str]] = {}
    for more in options:
        for role, values in more.items():
            out[role] = [*out.get(role, []), *values]
    return out


def c_devices(
    prepared: Prepared, workdir: Path, devices: int
) -> tuple[Launch, dict[Role, list[str]]]:
    """Build the first `devices` C devices of `prepared`'s export (the `c` entry point of
    `ddnn.device_runtimes`: devices/c_device.py); how the fleet starts a role then (a device
    as its binary, any other as `python -m ddnn`), and the options that have every device,
    C or Python, replay its uint8 frame file."""
    (plugin,) = entry_points(group="ddnn.device_runtimes", name="c")
    built = plugin.load()(prepared.artifacts, workdir, range(devices), prepared.reference.spec)

    def launch(role: Role) -> list[str]:
        return built.command(role) or python_m_ddnn(role)

    return launch, {Role.device(d): ["--source", built.source] for d in range(devices)}


def driven(running: Deployment, samples: int, window: int) -> tuple[range, float, CpuClock]:
    """Tick samples 0..`samples`-1 through `running` as fast as `window` allows: their ids,
    the seconds they took and the CPU every process of the deployment used meanwhile."""
    driver, fleet = running.driver, running.fleet
    cpu = CpuClock({name: fleet.procs[name].pid for name in running.processes})
    start = time.monotonic()
    ids = range(samples)
    driver.run(ids, window=window)
    seconds = max(driver.decided_at.values(), default=start) - start
    return ids, seconds, cpu.stop()


def runtime_figures(
    decisions: dict[int, Any],
    reference: Reference,
    samples: int,
    seconds: float,
    cpu: CpuClock,
    repeats: dict[str, int],
) -> dict[str, Any]:
    """One run's figures beside another's: throughput, exactly once, parity with the offline
    reference, and CPU seconds per decided sample of each process (devices averaged too)."""
    summary = summarize(decisions, reference.labels, samples, seconds, **repeats)
    per_sample = cpu.per_sample(len(decisions))
    devices = [v for name, v in per_sample.items() if name.startswith("device-")]
    return {
        "samples_per_second": summary["throughput"],
        "decisions_missing": summary["decisions_missing"],
        "decisions_twice": summary["decisions_twice"],
        "accuracy": summary["accuracy"],
        "mismatches": reference.compare(decisions.values())["mismatches"],
        "device_cpu_seconds_per_sample": round(sum(devices) / len(devices), 6) if devices else None,
        "cpu_seconds_per_sample": per_sample,
    }


def python_beside(
    prepared: Prepared,
    settings: BrokerSettings,
    workdir: Path,
    devices: int,
    extra: dict[Role, list[str]],
    cloud_replicas: int,
    window: int,
    samples: int,
) -> dict[str, Any]:
    """The same samples with Python devices (replaying the same frame files), on the same
    broker, before the C devices run: their figures (`runtime_figures`). Its aggregator keeps
    its ledger apart, or the C run's would find every sample decided already."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = {AGGREGATOR: ["--state", str(workdir / "state")]}
    with deployment(
        prepared,
        settings,
        workdir,
        devices=devices,
        extra=joined(extra, state),
        cloud_replicas=cloud_replicas,
    ) as running:
        ids, seconds, cpu = driven(running, samples, window)
    driver = running.driver
    decisions = {k: driver.decisions[k] for k in ids if k in driver.decisions}
    return runtime_figures(decisions, running.reference, samples, seconds, cpu, driver.repeats(ids))
