"""`ddnn bench live`: the live system against the ceiling of its own message pattern.

One run, one broker (mosquitto when installed, else the embedded one, or as chosen), one
export of the model, in this order: the bare message pattern of the deployment's shape, flat
out (ddnn/ops/bench/pattern.py: the ceiling); the live system paced like cameras, free-running on
the wall clock (`paced`) and ticked in lockstep (`paced_ticked`), with decision latency per
exit tier; the live system flat out, with each service's CPU seconds per sample. Figures
from one run compare; figures from two runs do not. Every live decision is checked against
the offline evaluation (`mismatches`) and for exactly once (`decided_twice`).

Design: docs/design/bench.md (each step, and what its figures mean).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.core.config import DDNNConfig
from ddnn.core.roles import CLOUD, Role, deployment_roles, tier_inputs
from ddnn.live.access import TRIGGER, login
from ddnn.live.broker.start import start_broker
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.wire import Decision, Features, Offload, Scores, Tick, Topics, encode
from ddnn.nn.checkpoint import load_model
from ddnn.nn.model import DDNN
from ddnn.ops.bench.pattern import Shape, run_pattern
from ddnn.ops.demo import demo_model
from ddnn.ops.deploy import Prepared, deployment, prepare
from ddnn.ops.fleet import CpuClock, summarize

WARMUP = 30  # samples decided before anything is timed (first frames, first connections)


def pattern_shape(net: DDNN, cfg: DDNNConfig, prepared: Prepared) -> Shape:
    """The message pattern of `prepared`'s deployment: its roles, where the offline model
    exits on each row of the replayed data with every device present, and the size of each
    kind of live message (encoded as the services encode them)."""
    model = cfg.model
    roles = deployment_roles(model)
    devices = [r for r in roles if r.tier == "device"]
    edges = {r: tier_inputs(model, r) for r in roles if r.tier == "edge"}
    _, exit_names = prepared.reference.decide(tuple(range(model.n_devices)))
    exits = list(net.exits)
    n_classes = len(model.classes)
    k, t = 10**6, time.time()  # a sample id and a time of the size the live ones have
    scores = Scores(sample=k, source=devices[0], scores=bytes(4 * n_classes), t0=t)
    fmt = model.device_feature_format
    features = Features.of(k, devices[0], np.ones(net.device_feature_shape, np.float32), fmt)
    return Shape(
        topics=Topics(prepared.name, prepared.manifest.model_version),
        devices=devices,
        edges=edges,
        cloud_inputs=tier_inputs(model, CLOUD) if model.cloud is not None else [],
        exits=exits,
        exit_of=[exits.index(name) for name in exit_names],
        bytes={
            "tick": len(encode(Tick(sample=k, t=t))),
            "scores": len(encode(scores)),
            "offload": len(encode(Offload(sample=k, sources=devices, to="cloud"))),
            "features": len(encode(features)),
            "decision": _decision_bytes(k, t, devices),
        },
    )


def _decision_bytes(k: int, t: float, devices: list[Role]) -> int:
    decision = Decision(
        sample=k,
        decided=True,
        class_index=0,
        class_name="person",
        exit="local",
        entropy=0.5,
        devices=list(range(len(devices))),
        bytes={"device_scores": 100},
        latency_ms=t % 100,
    )
    return len(encode(decision))


def paced_on_wall_clock(
    prepared: Prepared, settings: BrokerSettings, workdir: Path, fps: float, count: int
) -> tuple[dict[int, Decision], range]:
    """Run `prepared` on the wall clock (`on_wall_clock`): the decisions of `count`
    consecutive slots at `fps`, and the ids of those slots. Nothing is ticked."""
    with deployment(prepared, settings, workdir, fps=fps) as running:
        driver = running.driver
        ids = driver.listen(fps, count)
    return {k: driver.decisions[k] for k in ids if k in driver.decisions}, ids


def bench_live(
    model: Path | None,
    samples: int,
    window: int,
    fps: float,
    seconds: float,
    kind: str,
    cache: Path,
    log: Callable[[str], None],
    data: str | None = None,
) -> dict[str, Any]:
    """One run of the three measurements of the module doc; the figures as a document."""
    path = model if model is not None else demo_model(False, cache, log)
    net, cfg, meta = load_model(path)
    with tempfile.TemporaryDirectory(prefix="ddnn-bench-live-") as tmp:
        name = f"bench-{os.getpid()}"
        prepared = prepare(net, cfg, meta, Path(tmp), name, data)
        shape = pattern_shape(net, cfg, prepared)
        with start_broker(kind=kind, access=prepared.access, grants=False) as broker:
            settings = broker.settings()
            accounts = {
                a: login(settings, prepared.access, a)
                for a in [*deployment_roles(cfg.model), TRIGGER]
            }
            # the pattern runs over the live run's sample ids, so that both escalate the
            # same samples and send the same messages
            paced_n = max(1, round(fps * seconds))
            total = WARMUP + paced_n + samples
            log(f"bare message pattern: {total} samples, {window} in flight, {broker.kind}")
            ceiling = run_pattern(shape, accounts, total, window).figures()
            log(f"paced on the wall clock: {paced_n} samples at {fps:g} per second")
            wall, wall_ids = paced_on_wall_clock(prepared, settings, Path(tmp), fps, paced_n)
            with deployment(prepared, settings, Path(tmp), drain=1.0) as running:
                driver, fleet = running.driver, running.fleet
                log(f"live system: {len(running.roles)} services online; warming up")
                driver.run(range(WARMUP), window=window)
                paced_ids = range(WARMUP, WARMUP + paced_n)
                log(f"paced by ticks: {len(paced_ids)} samples at {fps:g} per second")
                driver.run(paced_ids, rate=fps, window=max(window, int(fps * 10)))
                flat_ids = range(paced_ids.stop, paced_ids.stop + samples)
                log(f"flat out: {samples} samples, {window} in flight")
                # CPU seconds of each service process, and of the broker's
                pids = {str(role): fleet.procs[role].pid for role in running.roles}
                pids["broker"] = broker.pid
                cpu = CpuClock(pids)
                start = time.monotonic()
                driver.run(flat_ids, window=window)
                ended = max((driver.decided_at.get(k, start) for k in flat_ids), default=start)
                cpu.stop()
            kind_used = broker.kind
    decisions = driver.decisions
    sent = sum(
        n
        for status in driver.status.values()
        for counter, n in status.counters.items()
        if counter.startswith("sent_")
    )
    ticked = flat_ids.stop
    labels = running.reference.labels
    paced = summarize(wall, labels, len(wall_ids), len(wall_ids) / fps)
    paced_ticked = summarize(
        {k: decisions[k] for k in paced_ids if k in decisions},
        labels,
        len(paced_ids),
        len(paced_ids) / fps,
    )
    flat = summarize(
        {k: decisions[k] for k in flat_ids if k in decisions},
        labels,
        samples,
        ended - start,
    )
    flat_rate = flat["decided"] / (ended - start) if ended > start else None
    everything = decisions | wall  # tick ids count from 0, wall ones from the Unix epoch
    parity = running.reference.compare(everything.values())
    return {
        "model": str(path),
        "data": running.reference.spec,
        "broker": {"kind": kind_used, "url": settings.url, "protocol": settings.protocol},
        "window": window,
        "ceiling": ceiling,
        "flat_out": {
            "samples": samples,
            "decided": flat["decided"],
            "seconds": round(ended - start, 3),
            "samples_per_second": round(flat_rate, 1) if flat_rate else None,
            "of_ceiling": round(flat_rate / ceiling["samples_per_second"], 3)
            if flat_rate and ceiling["samples_per_second"]
            else None,
            "cpu_seconds_per_sample": cpu.per_sample(flat["decided"]),
        },
        "paced": _paced(paced, fps, "wall"),
        "paced_ticked": _paced(paced_ticked, fps, "tick"),
        "messages_per_sample": round((sent + driver.ticks) / max(1, ticked), 2),
        "accuracy": summarize(everything, labels, ticked + len(wall_ids), 1.0)["accuracy"],
        "parity": {
            **parity,
            "decided_twice": driver.anomalies.get("decisions_twice", 0),
            "driver_anomalies": dict(driver.anomalies),
            "undecided": sum(not d.decided for d in everything.values()),
            "missing": ticked + len(wall_ids) - len(everything),
        },
    }


def _paced(summary: dict[str, Any], fps: float, clock: str) -> dict[str, Any]:
    return {
        "fps": fps,
        "clock": clock,
        "samples": summary["samples"],
        "decided": summary["decided"],
        "degraded": summary["degraded"],
        "exit_fraction": summary["exit_fraction"],
        "latency_ms": summary["latency_ms"],
    }
