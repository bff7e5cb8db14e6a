"""The `ddnn faults` scenario `device-flood`: device 0's account floods the aggregator with
valid scores while samples stream at 30 frames/s, with the aggregator's token buckets and,
in the same run, without them (docs/design/fairness.md: the rows and the bar).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.payloads import pack_scores
from ddnn.core.roles import AGGREGATOR, Role
from ddnn.live.rates import DEFAULT_FRAME_RATE
from ddnn.live.wire import Scores, encode
from ddnn.ops.faults.flooder import Order
from ddnn.ops.faults.harness import CLOUD_DEADLINE, SCORE_DEADLINE, Harness
from ddnn.ops.fleet import cpu_seconds

FRAME_RATE = 30.0  # samples per second of the deployment under the flood
FLOOD_RATE = 5000.0  # valid scores per second from the flooding account
WARM_UP = 30  # samples after the aggregator's restart, not measured
OPTION = "--frame-rate"


def _figures(h: Harness, samples: list[int], flooder: Role, deadline: float) -> dict[str, Any]:
    """A stretch's bar: decided within `deadline` (%), local exits' p50/p99 latency, and the
    scores of devices other than `flooder` its decisions went without."""
    got = [h.driver.decisions.get(k) for k in samples]
    in_time = sum(
        d is not None and d.decided and not d.degraded and (d.latency_ms or 0.0) <= 1e3 * deadline
        for d in got
    )
    local = [d.latency_ms for d in got if d and d.exit == "local" and d.latency_ms is not None]
    p50, p99 = np.percentile(local, [50, 99]) if local else (None, None)
    others = [r.index for r in h.devices() if r != flooder and r.index is not None]
    missing = sum(len(set(others) - set(d.devices)) for d in got if d is not None and d.decided)
    return {
        "in_time_pct": round(100.0 * in_time / len(samples), 2),
        "local_exits": len(local),
        "local_p50_ms": None if p50 is None else round(float(p50), 2),
        "local_p99_ms": None if p99 is None else round(float(p99), 2),
        "others_missing": missing,
    }


def _segment(h: Harness, n: int) -> tuple[range, float, float | None]:
    """`n` samples at `FRAME_RATE`; the seconds they took, and the CPU seconds the
    aggregator used meanwhile (what a flood costs it, whatever else the machine runs)."""
    aggregator = h.fleet.procs[AGGREGATOR].pid
    cpu, wall = cpu_seconds(aggregator), time.monotonic()
    samples = h.segment(n, rate=FRAME_RATE)
    used = cpu_seconds(aggregator)
    return samples, time.monotonic() - wall, None if cpu is None or used is None else used - cpu


def _aggregator_counts(h: Harness) -> dict[str, Any]:
    """What the aggregator counted so far (its latest status, after `h.health()`)."""
    status = h.driver.status.get(AGGREGATOR)
    counters = status.counters if status is not None else {}
    rejected = status.rejected if status is not None else {}
    return {
        "rate_dropped": counters.get("rate_dropped", 0),
        "inbox_dropped": counters.get("inbox_dropped", 0),
        "rate_reasons": {r: n for r, n in rejected.items() if "over its account's rate" in r},
    }


def _start_flooder(h: Harness, role: Role) -> subprocess.Popen[str]:
    """The flooding account's process (ddnn/ops/faults/flooder.py), connected, not yet flooding."""
    classes = len(h.reference.cfg.model.classes)
    values = np.linspace(0.5, -0.5, classes).astype(np.float32)  # within any bound
    valid = Scores(sample=0, source=role, scores=pack_scores(values), t0=time.time())
    order = Order(
        broker=h.login(role).model_dump_json(),
        topic=h.driver.topics.scores(role),
        template=encode(valid).hex(),
        rate=FLOOD_RATE,
        frame_rate=FRAME_RATE,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddnn.ops.faults.flooder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    _tell(proc, json.dumps(asdict(order)))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise DDNNError(f"the flooder did not connect (exit {proc.wait()})")
    return proc


def _tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _stop_flooder(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop the flooder; what it sent, and at what rate while it flooded."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    line = proc.stdout.readline()
    proc.wait(timeout=10)
    result = json.loads(line) if line.strip() else {"sent": 0, "seconds": 0.0}
    rate = result["sent"] / result["seconds"] if result["seconds"] else 0.0
    return {"flood_sent": result["sent"], "flood_rate": round(rate)}


def _variant(h: Harness, frame_rate: float, n: int, rounds: int) -> dict[str, Any]:
    """With the aggregator's buckets sized for `frame_rate` (0: none): `rounds` times,
    `n // rounds` samples unflooded then as many flooded, so that whatever else loads the
    machine weighs on both alike; the row of them all, the figures of each kind."""
    flooder = h.devices()[0]
    deadline = SCORE_DEADLINE + CLOUD_DEADLINE * (2 if h.reference.cfg.model.edge else 1)
    label = f"--frame-rate {frame_rate:g}" if frame_rate else "no bucket: --frame-rate 0"
    h.size_broker(frame_rate)  # amqtt: its own buckets too
    broker_dropped = h.broker.running.rate_dropped()
    h.restart_with(AGGREGATOR, OPTION, f"{frame_rate:g}")
    h.segment(WARM_UP, rate=FRAME_RATE)
    first = h.next_sample
    calm: list[int] = []
    flooded: list[int] = []
    cpu = {"calm": [0.0, 0.0], "flooded": [0.0, 0.0]}  # CPU seconds, seconds
    proc = _start_flooder(h, flooder)
    try:
        for _ in range(rounds):
            for kind, into in (("calm", calm), ("flooded", flooded)):
                if kind == "flooded":
                    _tell(proc, f"on {h.next_sample}")
                    h.mark(f"{flooder} floods {FLOOD_RATE:g} scores/s ({label})")
                samples, seconds, used = _segment(h, max(1, n // rounds))
                if kind == "flooded":
                    _tell(proc, "off")
                    h.mark("flood ends")
                into.extend(samples)
                cpu[kind][0] += used or 0.0
                cpu[kind][1] += seconds
    finally:
        sent = _stop_flooder(proc)
    quiet = _figures(h, calm, flooder, deadline)
    loud = _figures(h, flooded, flooder, deadline)
    p99, calm_p99 = loud["local_p99_ms"], quiet["local_p99_ms"]
    if broker_dropped is not None:  # what the broker's own buckets dropped (amqtt)
        sent["broker_rate_dropped"] = (h.broker.running.rate_dropped() or 0) - broker_dropped
    return h.row(
        f"{FRAME_RATE:g} samples/s, {rounds} x (unflooded, {flooder} flooding "
        f"{FLOOD_RATE:g} scores/s), {label}",
        range(first, h.next_sample),
        frame_rate=frame_rate,
        **{f"calm_{k}": v for k, v in quiet.items()},
        **loud,
        p99_ratio=round(p99 / calm_p99, 2) if p99 and calm_p99 else None,
        deadline_s=deadline,
        **sent,
        # the share of a core the aggregator used, unflooded and flooded
        calm_aggregator_cpu_pct=round(100.0 * cpu["calm"][0] / cpu["calm"][1], 1),
        aggregator_cpu_pct=round(100.0 * cpu["flooded"][0] / cpu["flooded"][1], 1),
        **h.health(),
        **_aggregator_counts(h),
    )


def device_flood(h: Harness) -> list[dict[str, Any]]:
    """13. Device 0's account floods the aggregator (docs/design/fairness.md): a row with
    the buckets of 30 frames/s, and one without (the alternative)."""
    n = max(2, round(h.sizes.flood_seconds * FRAME_RATE))
    rounds = max(2, round(h.sizes.flood_seconds / 10))
    try:
        return [_variant(h, FRAME_RATE, n, rounds), _variant(h, 0.0, n, rounds)]
    finally:
        h.size_broker(DEFAULT_FRAME_RATE)
        h.restart_with(AGGREGATOR, OPTION, None)
