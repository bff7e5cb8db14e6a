"""The `ddnn faults` scenarios of hostile input: garbage from compromised accounts
(bad-input), old samples ticked again (replay), forged messages on topics an account may
not write (forgery), fuzzed payloads (fuzz) and floods (flood).

None may kill a service, grow its refusal reasons past 64 keys or its memory without bound
(`Harness.health`), and each live decision must still equal offline evaluation. What the
hostile clients send is made in ddnn/ops/faults/hostile.py; how much, in `Sizes`.
"""

from __future__ import annotations

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import numpy as np

from ddnn.core.payloads import pack_scores
from ddnn.core.roles import AGGREGATOR
from ddnn.core.roles import PATTERN as ROLE_PATTERN
from ddnn.live.access import OBSERVER, TRIGGER, Grant, covers, grants, writer_of
from ddnn.live.mqtt.client import MqttClient
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
from ddnn.ops.faults.harness import CLOUD_DEADLINE, SCORE_DEADLINE, Harness, received
from ddnn.ops.faults.hostile import Flood, Kind, fuzzed, read_topics, send_paced

FORGED = 10**9  # the sample id of forged messages: far from any real one
CONFIDENT = np.array([12.0, -12.0, -12.0], dtype=np.float32)


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
    cloud = topics.offload("cloud")
    out += [(cloud, msgpack.packb({"v": 1, "kind": "offload", "sample": -1}))]
    out += [(cloud, encode(Offload(sample=sample, sources=["device-0"], to="cloud")))]
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
        h.mark("rogue messages")
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
    may be decided twice (a second decision would count as the anomaly `decisions_twice`)."""
    old = h.segment(h.sizes.replayed, rate=None)
    h.next_sample += 70_000
    newer = h.segment(20)
    h.mark(f"{len(old)} old samples ticked again")
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
    candidates = [topics.tick, topics.offload("edge"), topics.offload("cloud"), topics.decisions]
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
        h.mark("forgeries")
        for account in accounts:
            client = MqttClient(
                h.login(account), f"ddnn-forger-{account}", expect_denials=True
            ).connect()
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
    h.mark("fuzzing starts")
    with ThreadPoolExecutor(max_workers=len(per_account)) as pool:
        jobs = [pool.submit(send, a, mine) for a, mine in per_account.items()]
        samples = h.segment(20)
        while not all(j.done() for j in jobs):
            samples = range(samples.start, h.segment(20).stop)
        sent = sum(j.result() for j in jobs)
    h.mark("fuzzing ends")
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
    devices = h.devices()
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
        return AGGREGATOR, topics.offload("cloud"), encode(message)

    kinds = [Kind("ticks", tick), Kind("scores", scores), Kind("offloads", offload)]
    if features:
        kinds.append(Kind("features", feature_map))
    before = h.rss()
    deadline = SCORE_DEADLINE + CLOUD_DEADLINE * (2 if h.reference.cfg.model.edge else 1)
    h.mark("flood starts")
    flooding = Flood(kinds, h.sizes.flood_rate, client).start()
    try:
        rate = h.sizes.flood_samples / h.sizes.flood_seconds
        samples = h.segment(h.sizes.flood_samples, rate=rate)
    finally:
        sent = flooding.stop()
        h.mark("flood ends")
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
