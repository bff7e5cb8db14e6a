"""The `ddnn faults` scenarios that take parts of a deployment away: devices killed one at a
time or one after another, paused past the aggregator's deadline, killed and restarted
again and again; the broker and every upper service killed and restarted; the aggregator
killed again and again at random moments, and the broker down for long.

Each checks that decisions go on (with the devices left, as offline evaluation without the
missing ones decides) and, after a restart, resume on their own; the time that takes is
reported.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ddnn.core.roles import AGGREGATOR, Role
from ddnn.ops.faults.harness import SCORE_DEADLINE, Harness


def device_down(h: Harness) -> list[dict[str, Any]]:
    """1. Each single device killed mid-stream (one stretch per device, restarted after)."""
    everyone = tuple(range(len(h.devices())))
    full = h.reference.accuracy(everyone)
    rows = [h.row("all devices up", h.segment(20), cost=0.0)]
    for i, role in enumerate(h.devices()):
        samples = h.segment(40, {5: lambda role=role: h.kill(role)})
        killed = h.killed_at[role]
        detect = h.detected(role, killed)
        after = [
            d.latency_ms
            for k in samples
            if (d := h.driver.decisions.get(k)) is not None
            and h.driver.ticked_at[k] > killed + (detect or 0) + 0.1
            and d.exit == "local"
        ]
        rest = tuple(d for d in everyone if d != i)
        rows.append(
            h.row(
                f"device {i} killed",
                samples,
                detect_s=detect,
                local_p50_after_ms=round(float(np.median(after)), 1) if after else None,
                cost=round(full - h.reference.accuracy(rest), 2),
            )
        )
        h.restart(role)
        h.driver.wait_online([role])
    return rows


def attrition(h: Harness) -> list[dict[str, Any]]:
    """2. Devices killed one after another until one is left (Fig. 8 read backwards)."""
    devices = h.devices()
    rows = [h.row(f"{len(devices)} devices", h.segment(25))]
    for j, role in enumerate(devices[:-1]):
        samples = h.segment(25, {0: lambda role=role: h.kill(role)})
        rows.append(h.row(f"{len(devices) - j - 1} devices", samples))
    return rows


def straggler(h: Harness) -> list[dict[str, Any]]:
    """3. One device paused past the aggregator's score deadline on some samples."""
    role = h.devices()[2]
    pause = 3 * SCORE_DEADLINE
    samples = h.segment(80, {10: lambda: h.pause(role, pause), 50: lambda: h.pause(role, pause)})
    return [h.row(f"{role} paused {pause:g} s twice", samples)]


def flapping(h: Harness) -> list[dict[str, Any]]:
    """4. A device killed and restarted, again and again."""
    role = h.devices()[1]
    actions: dict[int, Callable[[], None]] = {}
    for start in (5, 45, 85):
        actions[start] = lambda: h.kill(role)
        actions[start + 10] = lambda: h.restart(role)
    samples = h.segment(120, actions)
    return [h.row(f"{role} killed and restarted 3 times", samples)]


def broker_restart(h: Harness) -> list[dict[str, Any]]:
    """5. The broker killed and restarted mid-stream."""

    def restart() -> None:
        h.mark("broker down")
        h.broker_back_at = h.broker.restart(1.0)
        h.mark("broker back", h.broker_back_at)

    samples = h.segment(80, {20: restart})
    back = h.broker_back_at or 0.0
    after = [t for k, t in h.driver.decided_at.items() if k in samples and t > back]
    recovery = round(min(after) - back, 3) if after else None
    return [h.row("broker killed, back after 1 s", samples, recovery_s=recovery)]


def service_restart(h: Harness) -> list[dict[str, Any]]:
    """6. The local aggregator, each edge and the cloud killed and restarted."""
    rows = []
    for role in [r for r in h.roles if r.tier != "device"]:

        def kill_and_restart(role: Role = role) -> None:
            h.kill(role)
            h.restart(role)

        samples = h.segment(60, {10: kill_and_restart})
        killed = h.killed_at[role]
        after = [t for k, t in h.driver.decided_at.items() if k in samples and t > killed]
        recovery = round(min(after) - killed, 3) if after else None
        rows.append(h.row(f"{role} killed and restarted", samples, recovery_s=recovery))
        h.driver.wait_online([role])
    return rows


def aggregator_kill_storm(h: Harness) -> list[dict[str, Any]]:
    """The aggregator SIGKILLed `Sizes.storm_kills` times at random moments while cameras
    stream at `storm_rate` frames/s (each kill a random time after a tick, within the frame,
    so that it may find samples open and decisions unacknowledged), each time restarted at
    the next frame: every sample still ends with exactly one decision content (its outbox:
    docs/design/outbox.md)."""
    n, kills, rate = h.sizes.storm_samples, h.sizes.storm_kills, h.sizes.storm_rate
    slot = n // kills
    rng = random.Random(27)  # random moments, the same in every run
    moments = [k * slot + rng.randrange(slot - 1) for k in range(kills)]
    timers: list[threading.Timer] = []

    def kill_after_the_tick() -> None:
        h.driver.dead.add(AGGREGATOR)  # (here: the driver's thread reads it)
        timer = threading.Timer(rng.uniform(0.0, 1.0 / rate), h.fleet.kill, (AGGREGATOR,))
        timer.start()
        timers.append(timer)

    def restart() -> None:
        timers.pop().join()
        h.killed_at[AGGREGATOR] = time.monotonic()
        h.mark(f"kill {AGGREGATOR}")
        h.restart(AGGREGATOR)

    actions = dict.fromkeys(moments, kill_after_the_tick)
    actions |= dict.fromkeys([m + 1 for m in moments], restart)
    samples = h.segment(n, actions, rate=rate)
    h.driver.wait_online([AGGREGATOR])
    return [h.row(f"aggregator SIGKILLed {kills} times", samples, kills=kills)]


def broker_outage(h: Harness) -> list[dict[str, Any]]:
    """The broker down for `Sizes.outage_seconds` mid-stream: what the aggregator decides
    meanwhile waits in its client and goes out once it is back (a QoS 1 message repeats at
    most once per reconnect, not once per loop iteration)."""
    down = h.sizes.outage_seconds

    def outage() -> None:
        h.mark("broker down")
        h.broker_back_at = h.broker.restart(down)
        h.mark("broker back", h.broker_back_at)

    samples = h.segment(120, {40: outage})
    return [h.row(f"broker down for {down:g} s", samples)]
