"""The bare message pattern of a deployment: the ceiling `ddnn bench live` holds the live
system to.

One process per role of the deployment, each logged in with that role's account and
publishing on that role's topics, exchanges the messages the live system exchanges for a
sample, and nothing else: a tick fans out to the devices and the aggregator; every device
answers with one scores-sized message; the aggregator groups them by sample and either
publishes a decision or, for the samples the offline model escalates, an offload request,
to which the devices (and edges) answer with feature-map-sized messages that the upper tier
groups into one scores message, and so on up to the decision. No model runs, nothing is
validated, every message is QoS 0 and a few bytes of msgpack of the live message's size:
whatever the live system adds on top of this is its own cost.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

import msgpack

from ddnn.core.errors import DDNNError
from ddnn.core.roles import AGGREGATOR, CLOUD, Role
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.wire import Topics

READY_TIMEOUT = 60.0  # seconds for every pattern process to start and subscribe


@dataclass(frozen=True)
class Shape:
    """What the pattern of one deployment needs to know: its roles, which inputs each upper
    tier groups, where each sample exits and how big each kind of message is."""

    topics: Topics
    devices: list[Role]
    edges: dict[Role, list[Role]]  # edge -> its group's devices (empty: no edge tier)
    cloud_inputs: list[Role]  # the roles whose feature maps the cloud groups
    exits: list[str]  # e.g. ["local", "cloud"] or ["local", "edge", "cloud"]
    exit_of: list[int]  # per row of the replayed data: the index in `exits` it exits at
    bytes: dict[str, int]  # payload bytes: tick, scores, offload, features, decision

    def upper(self) -> list[str]:
        return self.exits[1:]


def _payload(shape: Shape, kind: str, *fields: Any) -> bytes:
    """A msgpack list of `fields`, padded to the live message's size of `kind`."""
    head = msgpack.packb(list(fields))
    return head + bytes(max(0, shape.bytes[kind] - len(head)))


def _fields(payload: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker()
    unpacker.feed(payload)
    return next(unpacker)  # the padding after the list is never read


def _serve(
    role: Role, settings: BrokerSettings, shape: Shape, ready: Any, stop: Event, sent: Any
) -> None:
    """One pattern process: serve `role` until `stop`, then report how many messages it
    sent and the CPU seconds it used meanwhile."""
    # unthreaded, as the services' clients are (ddnn/live/service.py)
    client = MqttClient(settings, f"ddnn-pattern-{role}-{mp.current_process().pid}", threaded=False)
    t = shape.topics
    above = shape.upper()
    if role.tier == "device":
        inputs = [t.tick, *(t.offload(tier) for tier in above[:1])]  # the tier it feeds
    elif role == AGGREGATOR:
        inputs = [t.tick, t.all_scores]
    else:
        sources = shape.edges[role] if role.tier == "edge" else shape.cloud_inputs
        inputs = [t.features(r) for r in sources]
        if role.tier == "edge":
            inputs += [t.offload(tier) for tier in above]  # to fuse, and to send its map on
    offloads = {t.offload(tier) for tier in above}
    for topic in inputs:
        client.subscribe(topic, qos=0)
    client.connect()
    ready.put(role)
    cpu = time.process_time()
    count = 0
    groups: dict[tuple[str, int], int] = {}  # (what is grouped, sample) -> arrived so far
    wanted = {"device": len(shape.devices), "edge": len(shape.edges)}
    while not stop.is_set():
        item = client.get(0.1)
        if item is None:
            continue
        topic, payload = item
        fields = _fields(payload)
        sample = fields[0]
        out: list[tuple[str, bytes]] = []
        if role.tier in ("device", "edge") and topic in offloads:
            if role in fields[2]:
                out.append((t.features(role), _payload(shape, "features", sample, role)))
        elif role.tier == "device":  # a tick
            out.append((t.scores(role), _payload(shape, "scores", sample, role)))
        elif role.tier in ("edge", "cloud"):  # a feature map
            key = ("features", sample)
            groups[key] = groups.get(key, 0) + 1
            if groups[key] == (len(shape.edges[role]) if role.tier == "edge" else len(inputs)):
                del groups[key]
                out.append((t.scores(role), _payload(shape, "scores", sample, role)))
        elif topic != t.tick:  # the aggregator: scores of a device, an edge or the cloud
            out += _aggregate(shape, groups, wanted, Role(fields[1]), sample)
        for out_topic, out_payload in out:
            count += client.publish(out_topic, out_payload)
    sent.put((role, count, time.process_time() - cpu))
    client.close()


def _aggregate(
    shape: Shape, groups: dict[tuple[str, int], int], wanted: dict[str, int], source: Role, k: int
) -> list[tuple[str, bytes]]:
    """The aggregator's step on one scores message: group, then decide or escalate."""
    t = shape.topics
    exit_at = shape.exit_of[k % len(shape.exit_of)]
    decision = [(t.decisions, _payload(shape, "decision", k))]
    if source == CLOUD:
        return decision
    key = (source.tier, k)
    groups[key] = groups.get(key, 0) + 1
    if groups[key] < wanted[source.tier]:
        return []
    del groups[key]
    level = 0 if source.tier == "device" else 1  # the exit just reached
    if exit_at == level:
        return decision
    to = shape.upper()[level]
    sources = shape.devices if source.tier == "device" else list(shape.edges)
    return [(t.offload(to), _payload(shape, "offload", k, to, sources))]


@dataclass
class PatternResult:
    samples: int
    decided: int
    seconds: float
    messages: int  # published by every role, the driver's ticks included
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per role, while serving

    def figures(self) -> dict[str, Any]:
        per_sample = {
            role: round(seconds / max(1, self.decided), 6)
            for role, seconds in self.cpu_seconds.items()
        }
        return {
            "samples": self.samples,
            "decided": self.decided,
            "seconds": round(self.seconds, 3),
            "samples_per_second": round(self.decided / self.seconds, 1) if self.seconds else None,
            "messages_per_sample": round(self.messages / max(1, self.samples), 2),
            "cpu_seconds_per_sample": per_sample,
        }


def run_pattern(
    shape: Shape,
    accounts: dict[str, BrokerSettings],
    samples: int,
    window: int,
    trigger: str = "trigger",
    stall: float = 2.0,
) -> PatternResult:
    """Run the pattern of `shape` over `samples` samples with at most `window` in flight,
    each role logged in with `accounts[role]` (the driver with `accounts[trigger]`).
    A sample whose decision does not come within `stall` seconds (a QoS 0 message lost) is
    given up, so that the run ends; it counts as not decided."""
    context = mp.get_context("spawn")  # children import only this torch-free module
    ready, sent = context.Queue(), context.Queue()
    stop = context.Event()
    roles = [r for r in accounts if r != trigger]
    procs = [
        context.Process(
            target=_serve, args=(Role(r), accounts[r], shape, ready, stop, sent), daemon=True
        )
        for r in roles
    ]
    driver = MqttClient(accounts[trigger], f"ddnn-pattern-driver-{mp.current_process().pid}")
    try:
        for p in procs:
            p.start()
        for _ in procs:
            try:
                ready.get(timeout=READY_TIMEOUT)
            except Exception:  # queue.Empty
                raise DDNNError("the pattern's processes did not start") from None
        driver.subscribe(shape.topics.decisions, qos=0)
        driver.connect()
        result = _drive(driver, shape, samples, window, stall)
    finally:
        stop.set()
        driver.close()
        counts: Counter[str] = Counter()
        cpu: dict[str, float] = {}
        for _ in procs:
            try:
                role, counts[role], cpu[role] = sent.get(timeout=10)
            except Exception:  # queue.Empty: a process that died
                break
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    result.messages += sum(counts.values())
    result.cpu_seconds = dict(sorted(cpu.items(), key=lambda kv: roles.index(kv[0])))
    return result


def _drive(driver: MqttClient, shape: Shape, samples: int, window: int, stall: float):
    """Tick samples 0.. with at most `window` undecided, until all are decided."""
    open_: dict[int, float] = {}  # sample -> when ticked
    decided = 0
    next_sample = 0
    start = time.perf_counter()
    last = start
    while next_sample < samples or open_:
        while next_sample < samples and len(open_) < window:
            tick = _payload(shape, "tick", next_sample, time.time())
            driver.publish(shape.topics.tick, tick)
            open_[next_sample] = time.perf_counter()
            next_sample += 1
        item = driver.get(0.05)
        now = time.perf_counter()
        if item is not None and open_.pop(_fields(item[1])[0], None) is not None:
            decided += 1
            last = now
        for k in [k for k, at in open_.items() if now - at > stall]:
            del open_[k]  # lost: given up
    return PatternResult(samples, decided, last - start, next_sample)
