"""`ddnn demo`: the whole live system on one machine, with one command.

Trains a small model unless one is given (cached, so the second run starts at once),
exports it, starts a broker unless one is given, measures the broker's raw ceiling, starts
one process per device, the aggregator, the edges and the cloud exactly as an operator
would (`python -m ddnn <role> ...`), waits until every one is online, then drives the
devices in lockstep with `tick` messages over the test part (cycling when more samples are
asked for than it holds), keeps a bounded number of samples in flight, collects every
decision, shuts everything down and summarizes: accuracy, exit fractions, bytes per device,
latency per exit tier, throughput next to the broker ceiling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.errors import DDNNError
from ddnn.mqtt import BrokerSettings, MqttClient, connect_or_fail
from ddnn.wire import Decision, Status, Tick, Topics, WireError, decode, encode

DEMO_EPOCHS = 30
EDGE_GROUPS = "[[0,1,2],[3,4,5]]"
START_TIMEOUT = 120.0  # seconds for every service to come online (imports torch on 2 cores)
STALL_TIMEOUT = 20.0  # seconds without a new decision before the demo gives up waiting


def demo_model(edge: bool, cache: Path, log: Callable[[str], None]) -> Path:
    """The cached demo model, trained on the default synthetic set on first use."""
    path = cache / f"demo-{'edge' if edge else 'local-cloud'}-e{DEMO_EPOCHS}.pt"
    if path.exists():
        return path
    log(f"training a demo model ({DEMO_EPOCHS} epochs) into {path}; later demos reuse it")
    command = [sys.executable, "-m", "ddnn", "train", "--epochs", str(DEMO_EPOCHS)]
    command += ["--out", str(path)]
    if edge:
        command += ["--set", f"model.edge={{groups: {EDGE_GROUPS}}}"]
    if subprocess.run(command).returncode != 0:
        raise DDNNError("training the demo model failed (see above)")
    return path


class Fleet:
    """The service processes of one demo, stopped together."""

    def __init__(self, common: list[str], logs: Path) -> None:
        self.common = common
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, role: str, *args: str) -> None:
        command, _, index = role.partition("-")
        argv = [sys.executable, "-m", "ddnn", command, *self.common, *args]
        if index:
            argv += ["--id", index]
        log = (self.logs / f"{role}.log").open("w")
        # one compute thread per service: see ddnn.service_cli
        self.procs[role] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def check(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{role}.log").read_text().strip().splitlines()[-3:]
                raise DDNNError(
                    f"the {role} process exited ({proc.returncode}): {' | '.join(tail)}"
                )

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for role, proc in self.procs.items():
            try:
                codes[role] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[role] = proc.wait()
        return codes


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
    }


def summarize(
    decisions: dict[int, Decision], labels: np.ndarray, samples: int, seconds: float
) -> dict[str, Any]:
    decided = [d for d in decisions.values() if d.decided]
    tiers = ("local", "edge", "cloud")
    by_exit = Counter(d.exit for d in decided)
    right = sum(d.class_index == labels[d.sample % len(labels)] for d in decided)
    per_device = [
        (d.bytes.get("device_scores", 0) + d.bytes.get("device_features", 0)) / len(d.devices)
        for d in decided
    ]
    return {
        "samples": samples,
        "decided": len(decided),
        "undecided": sum(not d.decided for d in decisions.values()),
        "missing": samples - len(decisions),
        "degraded": sum(d.degraded for d in decided),
        "accuracy": round(100.0 * right / len(decided), 2) if decided else None,
        "exit_fraction": {t: round(100.0 * by_exit[t] / max(1, len(decided)), 2) for t in tiers},
        "bytes_per_device": round(float(np.mean(per_device)), 2) if per_device else None,
        "latency_ms": {
            t: _percentiles([d.latency_ms for d in decided if d.exit == t and d.latency_ms])
            for t in tiers
            if by_exit[t]
        },
        "throughput": round(len(decisions) / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 2),
    }


def drive(
    settings: BrokerSettings,
    topics: Topics,
    roles: list[str],
    samples: int,
    window: int,
    fleet: Fleet,
    log: Callable[[str], None],
) -> tuple[dict[int, Decision], float, Counter[str]]:
    """Wait for every role to be online, tick `samples` samples with at most `window` in
    flight, and collect the decisions. Returns them by sample, the seconds from the first
    tick to the last decision, and counts of anomalies (duplicates, bad payloads)."""
    client = MqttClient(settings, client_id=f"ddnn-demo-{os.getpid()}")
    client.start()
    client.subscribe(topics.all_status)
    client.subscribe(topics.decisions)
    connect_or_fail(client)
    online: set[str] = set()
    decisions: dict[int, Decision] = {}
    anomalies: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not set(roles) <= online:
            fleet.check()
            if time.monotonic() > deadline:
                raise DDNNError(
                    f"services not online after {START_TIMEOUT:g} s: {sorted(set(roles) - online)}"
                )
            item = client.get(timeout=0.2)
            if item is not None:
                m = decode(item[1])
                if isinstance(m, Status):
                    (online.add if m.state == "online" else online.discard)(m.role)
        log(f"{len(roles)} services online; driving {samples} samples")
        start = last = time.monotonic()
        ticked = 0
        while len(decisions) < samples:
            while ticked < samples and ticked - len(decisions) < window:
                client.publish(topics.tick, encode(Tick(sample=ticked, t=time.time())), qos=1)
                ticked += 1
            item = client.get(timeout=0.5)
            if item is None:
                fleet.check()
                if time.monotonic() - last > STALL_TIMEOUT:
                    anomalies["stalled"] += 1
                    break
                continue
            try:
                m = decode(item[1])
            except WireError:
                anomalies["bad_payload"] += 1
                continue
            if isinstance(m, Decision):
                if m.sample in decisions:
                    anomalies["duplicate_decision"] += 1
                decisions[m.sample] = m
                last = time.monotonic()
        return decisions, last - start, anomalies
    finally:
        client.close()


def run_demo(
    model: Path | None,
    samples: int,
    devices: int | None,
    edge: bool,
    broker_url: str | None,
    broker_protocol: str,
    window: int,
    decisions_path: Path | None,
    cache: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from ddnn.broker import broker_ceiling, start_broker
    from ddnn.checkpoint import load_model
    from ddnn.data import load_spec
    from ddnn.export import export
    from ddnn.train import split

    path = model if model is not None else demo_model(edge, cache, log)
    net, cfg, meta = load_model(path)
    n = cfg.model.n_devices
    k = n if devices is None else devices
    if not 1 <= k <= n:
        raise DDNNError(f"--devices must be 1..{n} for this model, got {k}")
    if cfg.model.local is None:
        raise DDNNError("the live system needs a model with a local exit")
    labels = split(load_spec(meta.get("data", "synth"), meta.get("grid", "2x3")), cfg.train)
    labels = labels.test.labels

    with tempfile.TemporaryDirectory(prefix="ddnn-demo-") as tmp:
        manifest = export(net, cfg, Path(tmp) / "artifacts", meta)
        broker = None
        if broker_url is None:
            broker = start_broker()
            settings = broker.settings()
        else:
            settings = BrokerSettings.from_url(broker_url, protocol=broker_protocol)
        try:
            ceiling = broker_ceiling(settings, messages=2000)
            deployment = f"demo-{os.getpid()}"
            common = ["--artifacts", str(Path(tmp) / "artifacts"), "--broker", settings.url]
            common += ["--mqtt", settings.protocol, "--deployment", deployment]
            common += ["--log-level", "warning"]
            fleet = Fleet(common, Path(tmp))
            roles = [f"device-{i}" for i in range(k)] + ["aggregator"]
            if cfg.model.edge is not None:
                roles += [f"edge-{e}" for e in range(len(cfg.model.edge.groups))]
            if cfg.model.cloud is not None:
                roles.append("cloud")
            try:
                for role in roles:
                    fleet.start(role)
                topics = Topics(deployment, manifest.model_version)
                decisions, seconds, anomalies = drive(
                    settings, topics, roles, samples, window, fleet, log
                )
            finally:
                codes = fleet.stop()
        finally:
            if broker is not None:
                broker.stop()
    report = summarize(decisions, labels, samples, seconds)
    report["anomalies"] = dict(anomalies)
    report["devices"] = k
    report["model_version"] = manifest.model_version
    report["broker"] = {
        "url": settings.url,
        "kind": broker.kind if broker is not None else "external",
        "ceiling_messages_per_second": ceiling["messages_per_second"],
    }
    report["clean_exits"] = all(code == 0 for code in codes.values())
    if decisions_path is not None:
        with decisions_path.open("w") as f:
            for sample in sorted(decisions):
                f.write(json.dumps(decisions[sample].model_dump(exclude={"v", "kind"})) + "\n")
    return report
