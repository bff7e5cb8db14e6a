"""`ddnn faults`: fault injection against a live deployment, checked against offline truth.

The scenarios run one after another on one deployment (broker, one process per role). Each
streams test samples through it with `tick` messages while it kills, pauses or restarts
processes, the broker, or lets a rogue client publish garbage; after it, every service it
killed is restarted and all must be back online before the next one begins. What the design
promises is then checked:

- every sample ticked ends in exactly one decision or one explicit undecided message;
- no service dies of bad input, and every rejected message is counted with its reason
  (the counters travel in each service's status message);
- each live decision equals the offline evaluation (`ddnn eval --missing ...`) for the set
  of devices that took part in it, so the accuracy with device i down is that of the
  offline model without device i (the cost column gives it on the whole test part);
- after a restart, decisions resume on their own; the time they take is reported;
- hostile input (bad-input, forgery, fuzz, flood, replay) kills no service, keeps each one's
  refusal reasons within 64 keys and its memory bounded (rows with `service_deaths`,
  `reason_keys`, `max_rss_mb`, and `rss_growth_mb` where much is sent); how much the
  hostile scenarios send is `Sizes` (`ddnn faults --quick` sends less).
"""

from __future__ import annotations

import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.payloads import pack_scores
from ddnn.core.roles import AGGREGATOR, Role
from ddnn.core.roles import PATTERN as ROLE_PATTERN
from ddnn.live.access import OBSERVER, TRIGGER, Grant, covers, grants, login, writer_of
from ddnn.live.broker import start_broker
from ddnn.live.mqtt import BrokerSettings, MqttClient
from ddnn.live.service import STATUS_EVERY
from ddnn.live.transport import Received, UntilEcho
from ddnn.live.wire import (
    MAX_PAYLOAD,
    Decision,
    Features,
    Offload,
    Scores,
    Status,
    Tick,
    Topics,
    encode,
)
from ddnn.nn.checkpoint import load_model
from ddnn.ops.deploy import deployment, prepare
from ddnn.ops.fleet import Driver, Fleet, Reference, summarize
from ddnn.ops.hostile import Flood, Kind, fuzzed, read_topics, send_paced

RATE = 25.0  # samples per second while faults happen
SCORE_DEADLINE = 0.5  # the aggregator's wait for device scores, seconds
CLOUD_DEADLINE = 1.5
FORGED = 10**9  # the sample id of forged messages: far from any real one
CONFIDENT = np.array([12.0, -12.0, -12.0], dtype=np.float32)


@dataclass(frozen=True)
class Sizes:
    """How much the hostile scenarios send: the issue's bars by default, less with
    `quick()` (tests, a first try)."""

    fuzz_per_topic: int = 10_000  # fuzzed payloads on every topic a service reads
    # ... sent at this many per second in all: what the services take on 2 cores beside the
    # real samples (the aggregator reads 16 of the 23 topics); faster, the broker's bounded
    # queue for a service drops real messages with the garbage (that is the flood scenario)
    fuzz_rate: float = 1000.0
    poison_rounds: int = 3  # retained garbage on every status topic, then every role restarts
    flood_seconds: float = 60.0
    flood_samples: int = 500  # real samples streamed through the flood
    flood_rate: float = 250.0  # messages per second of each flooded kind
    replayed: int = 1000  # old samples ticked again after 70,000 newer ones

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            fuzz_per_topic=100,
            poison_rounds=1,
            flood_seconds=5.0,
            flood_samples=40,
            flood_rate=100.0,
            replayed=50,
        )


@dataclass
class Harness:
    """One deployment under test: broker, fleet, driver, and the offline reference."""

    fleet: Fleet
    driver: Driver
    reference: Reference
    roles: list[Role]
    access: Path  # the deployment's accounts: a rogue logs in with a role's own
    restart_broker: Callable[[float], float] | None  # down for s seconds -> restart time
    sizes: Sizes = field(default_factory=Sizes)
    next_sample: int = 0
    killed_at: dict[str, float] = field(default_factory=dict)  # monotonic, latest kill
    broker_back_at: float | None = None
    _examples: dict[str, bytes] | None = None

    def segment(
        self, n: int, actions: dict[int, Callable[[], None]] | None = None, rate: float = RATE
    ) -> range:
        """Stream the next `n` samples; `actions[j]` runs just before the j-th of them."""
        samples = range(self.next_sample, self.next_sample + n)
        self.next_sample += n
        actions = actions or {}

        def before(k: int) -> None:
            if (action := actions.get(k - samples.start)) is not None:
                action()

        self.driver.run(samples, rate=rate, before=before, window=64)
        return samples

    def kill(self, role: Role) -> None:
        self.driver.dead.add(role)
        self.fleet.kill(role)
        self.killed_at[role] = time.monotonic()

    def restart(self, role: Role) -> None:
        self.fleet.restart(role)
        self.driver.dead.discard(role)

    def login(self, account: str) -> BrokerSettings:
        """Broker settings logged in as `account` of the deployment."""
        return login(self.driver.client.settings, self.access, account)

    def health(self) -> dict[str, Any]:
        """What no hostile input may change: processes that died by themselves, reasons
        counted per service (at most 64 keys, from a status sent after this call), the
        largest resident memory of a service, all of it and its own (`Memory`)."""
        live = [r for r in self.roles if r not in self.driver.dead]
        asked = time.time()
        deadline = time.monotonic() + STATUS_EVERY + 2.0
        while time.monotonic() < deadline and any(
            r not in self.driver.status or self.driver.status[r].t < asked for r in live
        ):
            self.driver.pump(0.1)
        deaths = [r for r in live if not self.fleet.alive(r)]
        keys = [len(self.driver.status[r].rejected) for r in live if r in self.driver.status]
        memory = [m for r in live if (m := self.fleet.memory_mb(r)) is not None]
        return {
            "service_deaths": len(deaths),
            "reason_keys": max(keys, default=0),
            "max_rss_mb": max((m.rss for m in memory), default=None),
            "max_anon_mb": max((m.anon for m in memory), default=None),
        }

    def rss(self) -> dict[Role, float]:
        """The resident memory of every live service, in MB."""
        return {r: m.rss for r in self.roles if (m := self.fleet.memory_mb(r)) is not None}

    def growth(self, before: dict[Role, float]) -> float | None:
        """The largest growth of a service's resident memory since `before` (`rss()`), MB."""
        now = self.rss()
        return max((round(now[r] - mb, 1) for r, mb in before.items() if r in now), default=None)

    def examples(self) -> dict[str, bytes]:
        """One real payload of every topic a service reads, taken from the deployment's
        own traffic while a few samples stream (what the fuzzers and floods start from)."""
        if self._examples is None:
            topics = self.driver.topics
            observer = MqttClient(self.login(OBSERVER), "ddnn-faults-examples")
            observer.subscribe(f"{topics.root}/#")
            observer.connect()
            try:
                self.segment(30)
                self._examples = dict(received(observer, topics))
            finally:
                observer.close()
        return self._examples

    def detected(self, role: Role, since: float) -> float | None:
        """Seconds from `since` until `role` was seen offline (its last will)."""
        events = self.driver.events
        times = [t for t, r, s in events if r == role and s == "offline" and t >= since]
        return round(min(times) - since, 3) if times else None

    def row(self, name: str, samples: range, **extra: Any) -> dict[str, Any]:
        """The report line of a stretch of samples, with the checks every scenario makes."""
        got = {k: d for k in samples if (d := self.driver.decisions.get(k)) is not None}
        summary = summarize(got, self.reference.labels, len(samples), seconds=0.0)
        local_latency = summary["latency_ms"].get("local", {"p50": None})
        return {
            "scenario": name,
            "first_sample": samples.start,
            **{k: summary[k] for k in ("samples", "decided", "undecided", "degraded")},
            "lost": summary["missing"],
            "accuracy": summary["accuracy"],
            **self.reference.compare(got.values()),
            "exit_fraction": summary["exit_fraction"],
            "latency_p50_ms": local_latency["p50"],
            "reasons": dict(Counter(d.reason for d in got.values() if d.reason)),
            **extra,
        }


def received(observer: MqttClient, topics: Topics, timeout: float = 10.0) -> list[Received]:
    """What `observer` (the observer account, subscribed to the deployment, its own probe
    topic included) has received up to now (`UntilEcho`)."""
    return list(UntilEcho(observer, f"{topics.hello}/{OBSERVER}/{observer.client_id}", timeout))


def _devices(h: Harness) -> list[str]:
    return [r for r in h.roles if r.tier == "device"]


def device_down(h: Harness) -> list[dict[str, Any]]:
    """1. Each single device killed mid-stream (one stretch per device, restarted after)."""
    everyone = tuple(range(len(_devices(h))))
    full = h.reference.accuracy(everyone)
    rows = [h.row("all devices up", h.segment(20), cost=0.0)]
    for i, role in enumerate(_devices(h)):
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
    devices = _devices(h)
    rows = [h.row(f"{len(devices)} devices", h.segment(25))]
    for j, role in enumerate(devices[:-1]):
        samples = h.segment(25, {0: lambda role=role: h.kill(role)})
        rows.append(h.row(f"{len(devices) - j - 1} devices", samples))
    return rows


def straggler(h: Harness) -> list[dict[str, Any]]:
    """3. One device paused past the aggregator's score deadline on some samples."""
    role = _devices(h)[2]
    pause = 3 * SCORE_DEADLINE
    samples = h.segment(
        80, {10: lambda: h.fleet.pause(role, pause), 50: lambda: h.fleet.pause(role, pause)}
    )
    return [h.row(f"{role} paused {pause:g} s twice", samples)]


def flapping(h: Harness) -> list[dict[str, Any]]:
    """4. A device killed and restarted, again and again."""
    role = _devices(h)[1]
    actions: dict[int, Callable[[], None]] = {}
    for start in (5, 45, 85):
        actions[start] = lambda: h.kill(role)
        actions[start + 10] = lambda: h.restart(role)
    samples = h.segment(120, actions)
    return [h.row(f"{role} killed and restarted 3 times", samples)]


def broker_restart(h: Harness) -> list[dict[str, Any]]:
    """5. The broker killed and restarted mid-stream."""
    if h.restart_broker is None:
        raise DDNNError("broker-restart needs a broker the faults run starts itself")
    restart_broker = h.restart_broker

    def restart() -> None:
        h.broker_back_at = restart_broker(1.0)

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


def rogue_payloads(topics: Topics, sample: int, decided: int) -> list[tuple[str, bytes]]:
    """Bad messages for every topic the services read; `decided` is a sample already
    decided (duplicates, out of order), `sample` one far in the future (unknown)."""
    scores = Scores(sample=decided, source="device-0", scores=b"\0" * 12, t0=0.0)
    as_map = scores.model_dump()
    bad_scores = [
        b"\xc1\xc1",  # not msgpack
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({**as_map, "v": 9}),  # unknown schema version
        msgpack.packb({**as_map, "scores": b"\0" * 5}),  # not float32
        msgpack.packb({**as_map, "scores": b"\0" * 16}),  # 4 classes, not 3
        msgpack.packb({**as_map, "scores": np.array([1, np.nan, 0], "<f4").tobytes()}),
        msgpack.packb({**as_map, "scores": np.array([np.inf, 0, 0], "<f4").tobytes()}),
        b"\x80" * (MAX_PAYLOAD + 1),  # oversized: our client does not even send it
        encode(scores),  # duplicate of a decided sample: late
        encode(scores.model_copy(update={"sample": sample})),  # a sample no tick started
        encode(scores.model_copy(update={"source": "device-77"})),  # unknown device
    ]
    features = Features(
        sample=decided, source="device-0", encoding="bits", shape=[4, 8, 8], data=b"\0" * 32
    )
    out = [(topics.scores("device-0"), p) for p in bad_scores]
    out += [(topics.features("device-0"), encode(features))]  # wrong shape
    out += [(topics.features("device-0"), b"\xc1")]
    out += [(topics.tick, b"\xc1"), (topics.tick, msgpack.packb({"v": 1, "kind": "tick"}))]
    out += [(topics.offload, msgpack.packb({"v": 1, "kind": "offload", "sample": -1}))]
    out += [(topics.offload, encode(Offload(sample=sample, sources=["device-0"], to="cloud")))]
    out += [(topics.status("device-0"), b"\xc1")]
    out += [(topics.scores("cloud"), encode(Tick(sample=decided, t=0.0)))]  # wrong kind
    return out


def bad_input(h: Harness) -> list[dict[str, Any]]:
    """7. Compromised accounts publish garbage on every topic the services read, mid-stream:
    each topic's garbage comes from the account allowed to write it (the broker would refuse
    it from any other, see `forgery`)."""
    topics = h.driver.topics
    accounts = grants(h.reference.cfg.model, topics)
    rogues: dict[str, MqttClient] = {}
    sent: list[int] = []
    start = h.next_sample

    def rogue(topic: str) -> MqttClient:
        account = writer_of(accounts, topic)
        if account not in rogues:
            settings = h.login(account)
            rogues[account] = MqttClient(settings, f"ddnn-rogue-{account}").connect()
        return rogues[account]

    def attack(at: int) -> None:
        # `at - 10` was ticked a while ago: decided, or about to be
        for topic, payload in rogue_payloads(topics, 10**9, start + at - 10):
            rogue(topic).publish(topic, payload, qos=1)
            sent.append(len(payload))

    try:
        samples = h.segment(60, {20: lambda: attack(20), 40: lambda: attack(40)})
    finally:
        for client in rogues.values():
            client.close()
    health = h.health()  # from statuses sent after the attack: their refusals count it
    rejected = {r: dict(s.rejected) for r, s in h.driver.status.items() if s.rejected}
    return [
        h.row(
            "rogue messages on every topic",
            samples,
            rogue_messages=len(sent),
            rejected=rejected,
            **health,
        )
    ]


def replay(h: Harness) -> list[dict[str, Any]]:
    """8. Samples ticked again after ones 70,000 ids newer (`Sizes.replayed` of them): none
    may be decided twice (a second decision would count as the anomaly `decided_twice`)."""
    old = h.segment(h.sizes.replayed, rate=None)
    h.next_sample += 70_000
    newer = h.segment(20)
    for k in old:  # decided already: the driver's run would not tick them again
        h.driver.tick(k)
    end = time.monotonic() + 2.0  # what the services answer to the replay, if anything
    while time.monotonic() < end:
        h.driver.pump(0.1)
    return [
        h.row("before the jump", old),
        h.row("70,000 ids later", newer, replayed=len(old), **h.health()),
    ]


def forged_topics(topics: Topics, account: str, accounts: dict[str, Grant]) -> list[str]:
    """Every topic a service reads, and spellings of them, that `account` may not write:
    other roles' statuses, scores and feature maps, ticks, offload requests, decisions, role
    names that are not roles (`device-00`, `Device-0`), extra levels, others' probes."""
    roles = [name for name in accounts if name not in (TRIGGER, OBSERVER)]
    candidates = [topics.tick, topics.offload, topics.decisions]
    for role in roles:
        candidates += [topics.status(role), topics.scores(role), topics.features(role)]
    candidates += [f"{topics.root}/scores/device-00", f"{topics.root}/scores/Device-0"]
    candidates += [f"{topics.root}/scores/device-0/", f"{topics.root}/status/aggregator/x"]
    candidates += [f"{topics.hello}/{other}/x" for other in accounts if other != account]
    return [t for t in candidates if not any(covers(g, t) for g in accounts[account].write)]


def forged_payload(topic: str, topics: Topics) -> bytes:
    """A well-formed message that would do harm if delivered on `topic`: its role said
    offline, confident scores or a decision for a sample nobody started, a tick of one."""
    level, _, name = topic.removeprefix(topics.root + "/").partition("/")
    role = name if re.fullmatch(ROLE_PATTERN, name) else "device-0"
    now = time.time()
    if level == "status":
        return encode(Status(role=role, state="offline", t=now))
    if level == "scores":
        return encode(Scores(sample=FORGED, source=role, scores=pack_scores(CONFIDENT), t0=now))
    if level == "decisions":
        return encode(Decision(sample=FORGED, decided=True, class_index=0, exit="local"))
    return encode(Tick(sample=FORGED, t=now))


def forgery(h: Harness) -> list[dict[str, Any]]:
    """9. Mid-stream, every account of the deployment publishes a forged message on every
    topic it may not write (`forged_topics`), retained where statuses are: an observer that
    reads the whole deployment must receive none of them."""
    topics = h.driver.topics
    accounts = grants(h.reference.cfg.model, topics)
    observer = MqttClient(h.login(OBSERVER), "ddnn-faults-observer")
    observer.subscribe(f"{topics.root}/#")
    observer.connect()
    forged: set[bytes] = set()
    sent = denied = 0

    def attack() -> None:
        nonlocal sent, denied
        for account in accounts:
            client = MqttClient(h.login(account), f"ddnn-forger-{account}").connect()
            for topic in forged_topics(topics, account, accounts):
                payload = forged_payload(topic, topics)
                forged.add(payload)
                sent += client.publish(topic, payload, qos=1, retain="/status/" in topic)
            client.close()
            denied += client.denied

    try:
        samples = h.segment(60, {20: attack})
        delivered = sum(payload in forged for _, payload in received(observer, topics))
    finally:
        observer.close()
    counted = denied if observer.protocol == "5" else None  # 3.1.1 has no PUBACK codes
    return [
        h.row(
            "forged messages from every account",
            samples,
            forged_sent=sent,
            forged_denied=counted,
            forged_delivered=delivered,
            **h.health(),
        )
    ]


def fuzz(h: Harness) -> list[dict[str, Any]]:
    """10. Every topic a service reads gets `Sizes.fuzz_per_topic` fuzzed payloads (made
    from the deployment's own messages: noise, flipped bytes, cut, extended, fields of the
    wrong type or absurd value) from the account that may write it, while real samples
    stream. Then, `Sizes.poison_rounds` times: every service killed, garbage retained on
    every status topic, every service started again; each must come online and decide."""
    examples = h.examples()
    topics = read_topics(h.driver.topics, h.roles)
    accounts = grants(h.reference.cfg.model, h.driver.topics)
    before = h.rss()
    per_account: dict[str, list[str]] = {}
    for topic in topics:
        per_account.setdefault(writer_of(accounts, topic), []).append(topic)

    def send(account: str, mine: list[str]) -> int:
        client = MqttClient(h.login(account), f"ddnn-fuzzer-{account}").connect()
        rng = random.Random(account)  # one per sender thread: the same payloads every run
        try:
            valid = {t: examples.get(t, forged_payload(t, h.driver.topics)) for t in mine}
            stream = (
                (t, fuzzed(valid[t], rng)) for _ in range(h.sizes.fuzz_per_topic) for t in mine
            )
            return send_paced(client, stream, h.sizes.fuzz_rate * len(mine) / len(topics))
        finally:
            client.close()

    sent = 0
    with ThreadPoolExecutor(max_workers=len(per_account)) as pool:
        jobs = [pool.submit(send, a, mine) for a, mine in per_account.items()]
        samples = h.segment(20)
        while not all(j.done() for j in jobs):
            samples = range(samples.start, h.segment(20).stop)
        sent = sum(j.result() for j in jobs)
    rows = [
        h.row(
            f"{h.sizes.fuzz_per_topic} fuzzed payloads on each of {len(topics)} topics",
            samples,
            fuzz_sent=sent,
            rss_growth_mb=h.growth(before),
            **h.health(),
        )
    ]
    for round_ in range(h.sizes.poison_rounds):
        _restart_over_poison(h, round_)
    rows.append(
        h.row(
            f"garbage retained on every status topic, every service restarted "
            f"{h.sizes.poison_rounds} times",
            h.segment(20),
            **h.health(),
        )
    )
    return rows


def _restart_over_poison(h: Harness, round_: int) -> None:
    """Kill every service, retain garbage on every status topic (from the topic's own
    account: not msgpack, an unhashable kind, a valid message of another kind, by round),
    start every service again and wait until all say online."""
    topics = h.driver.topics
    poison = [b"\xc1", msgpack.packb({"v": 1, "kind": [1]}), forged_payload(topics.tick, topics)]
    since = time.monotonic()
    for role in h.roles:
        h.kill(role)
    for role in h.roles:  # after its last will, which would overwrite the garbage
        while h.detected(role, since) is None and time.monotonic() - since < 10:
            h.driver.pump(0.05)
    for role in h.roles:
        client = MqttClient(h.login(role), f"ddnn-poisoner-{role}").connect()
        client.publish(topics.status(role), poison[round_ % len(poison)], qos=1, retain=True)
        client.close()
    for role in h.roles:
        h.restart(role)
    h.driver.wait_online(h.roles)


def flood(h: Harness) -> list[dict[str, Any]]:
    """11. For `Sizes.flood_seconds`, floods at `Sizes.flood_rate` per second each, from the
    accounts that may send them: ticks repeating recent samples and stale ones (trigger),
    scores and feature maps of samples nobody started (devices), offload requests of
    samples long decided (aggregator); meanwhile `Sizes.flood_samples` real samples stream
    at an even pace. Each must be decided within its deadlines."""
    topics = h.driver.topics
    examples = h.examples()
    features = [(t, p) for t, p in examples.items() if "/features/device-" in t]
    devices = _devices(h)
    recent = list(range(max(0, h.next_sample - 50), h.next_sample))
    clients: dict[str, MqttClient] = {}

    def client(account: str) -> MqttClient:
        if account not in clients:
            clients[account] = MqttClient(h.login(account), f"ddnn-flood-{account}").connect()
        return clients[account]

    def tick(n: int) -> tuple[str, str, bytes]:
        t = time.time() - (3600.0 if n % 2 else 0.0)
        sample = recent[n % len(recent)] if n % 2 == 0 and recent else FORGED + n
        return TRIGGER, topics.tick, encode(Tick(sample=sample, t=t))

    def scores(n: int) -> tuple[str, str, bytes]:
        role = devices[n % len(devices)]
        message = Scores(
            sample=FORGED + n, source=role, scores=pack_scores(CONFIDENT), t0=time.time()
        )
        return role, topics.scores(role), encode(message)

    def feature_map(n: int) -> tuple[str, str, bytes]:
        topic, payload = features[n % len(features)]
        fields = msgpack.unpackb(payload)
        fields["sample"] = FORGED + n
        return fields["source"], topic, msgpack.packb(fields, use_bin_type=True)

    def offload(n: int) -> tuple[str, str, bytes]:
        message = Offload(sample=recent[n % len(recent)], sources=list(devices), to="cloud")
        return AGGREGATOR, topics.offload, encode(message)

    kinds = [Kind("ticks", tick), Kind("scores", scores), Kind("offloads", offload)]
    if features:
        kinds.append(Kind("features", feature_map))
    before = h.rss()
    deadline = SCORE_DEADLINE + CLOUD_DEADLINE * (2 if h.reference.cfg.model.edge else 1)
    flooding = Flood(kinds, h.sizes.flood_rate, client).start()
    try:
        rate = h.sizes.flood_samples / h.sizes.flood_seconds
        samples = h.segment(h.sizes.flood_samples, rate=rate)
    finally:
        sent = flooding.stop()
        for c in clients.values():
            c.close()
    decided = [d for k in samples if (d := h.driver.decisions.get(k)) is not None]
    in_time = sum(
        d.decided and not d.degraded and (d.latency_ms or 0.0) <= 1000.0 * deadline for d in decided
    )
    return [
        h.row(
            f"{h.sizes.flood_seconds:g} s of floods at {h.sizes.flood_rate:g}/s each",
            samples,
            in_time_pct=round(100.0 * in_time / len(samples), 2),
            deadline_s=deadline,
            flood_sent=sent,
            rss_growth_mb=h.growth(before),
            **h.health(),
        )
    ]


SCENARIOS: dict[str, Callable[[Harness], list[dict[str, Any]]]] = {
    "device-down": device_down,
    "attrition": attrition,
    "straggler": straggler,
    "flapping": flapping,
    "broker-restart": broker_restart,
    "service-restart": service_restart,
    "bad-input": bad_input,
    "replay": replay,
    "forgery": forgery,
    "fuzz": fuzz,
    "flood": flood,
}


def run_scenarios(
    names: list[str],
    model: Path,
    log: Callable[[str], None],
    workdir: Path | None = None,
    data: str | None = None,
    sizes: Sizes | None = None,
) -> dict[str, Any]:
    """Run scenarios `names`, in order, on one deployment of `model`, its devices replaying
    the test part of `data` (a SPEC; default: the data the model was trained on), the very
    samples the offline reference decides.

    Returns per scenario its rows, whether every process that should live was alive at its
    end, and the anomalies and restarts it caused; and for the deployment, the services'
    final counters and rejections (from their last status) and whether each exited cleanly."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        known = ", ".join([*SCENARIOS, "dropout"])
        raise DDNNError(f"unknown scenario {unknown[0]!r}; known: {known}")
    net, cfg, meta = load_model(model)
    aggregator = ["--score-deadline", str(SCORE_DEADLINE)]
    aggregator += ["--edge-deadline", str(CLOUD_DEADLINE)]
    aggregator += ["--cloud-deadline", str(CLOUD_DEADLINE)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ddnn-faults-") as tmp:
        work = workdir or Path(tmp)
        prepared = prepare(net, cfg, meta, work, "faults", data)
        state = work / "broker-state"  # a restarted broker knows who is online
        broker = start_broker(access=prepared.access, state=state)
        port = broker.port

        def restart_broker(down: float) -> float:
            nonlocal broker
            broker.stop()
            time.sleep(down)
            broker = start_broker(port=port, access=prepared.access, state=state)
            return time.monotonic()

        try:
            with deployment(
                prepared,
                broker.settings(),
                work,
                extra={AGGREGATOR: aggregator},
                log_level="info",
                retry_after=3.0,
                drain=2.0,  # the services' last statuses, with their counters
            ) as running:
                fleet, driver, roles = running.fleet, running.driver, running.roles
                reference = running.reference
                log(f"{len(roles)} services online; devices replay {reference.spec} (test)")
                h = Harness(
                    fleet,
                    driver,
                    reference,
                    roles,
                    prepared.access,
                    restart_broker,
                    sizes or Sizes(),
                )
                for name in names:
                    log(f"scenario {name}")
                    anomalies, restarts = Counter(driver.anomalies), Counter(fleet.restarts)
                    began = time.monotonic()
                    rows = SCENARIOS[name](h)
                    alive = {role: fleet.alive(role) for role in roles if role not in driver.dead}
                    for role in sorted(driver.dead):
                        h.restart(role)  # the next scenario starts from a whole deployment
                    driver.wait_online(roles)
                    results.append(
                        {
                            "scenario": name,
                            "data": reference.spec,
                            "rows": rows,
                            "alive": alive,
                            "anomalies": dict(driver.anomalies - anomalies),
                            "restarts": dict(fleet.restarts - restarts),
                            "seconds": round(time.monotonic() - began, 1),
                        }
                    )
        finally:
            broker.stop()
    return {
        "model": str(model),
        "data": reference.spec,
        "scenarios": results,
        "clean_exits": {role: code == 0 for role, code in running.codes.items()},
        "counters": {r: s.counters for r, s in driver.status.items()},
        "rejected": {r: s.rejected for r, s in driver.status.items() if s.rejected},
    }


def run_faults(
    names: list[str],
    model: Path,
    baseline: Callable[[], Path],
    log: Callable[[str], None],
    data: str | None = None,
    sizes: Sizes | None = None,
) -> dict[str, Any]:
    """What `ddnn faults` reports: scenarios `names` on one deployment of `model`; "dropout"
    among them sets device-down of `model` beside device-down of `baseline()` (a model trained
    without device dropout, on a second deployment), reusing the first's device-down run."""
    wanted = [n for n in names if n != "dropout"]
    if "dropout" in names and "device-down" not in wanted:
        wanted.append("device-down")
    runs = [run_scenarios(wanted, model, log, data=data, sizes=sizes)]
    results = [r for r in runs[0]["scenarios"] if r["scenario"] in names]
    if "dropout" in names:
        runs.append(run_scenarios(["device-down"], baseline(), log, data=data))
        pair = [
            (
                "with dropout",
                next(r for r in runs[0]["scenarios"] if r["scenario"] == "device-down"),
            ),
            ("without dropout", runs[1]["scenarios"][0]),
        ]
        results += [{**r, "scenario": f"dropout: {label}"} for label, r in pair]
    deployments = [{k: v for k, v in run.items() if k != "scenarios"} for run in runs]
    return {"results": results, "deployments": deployments}
