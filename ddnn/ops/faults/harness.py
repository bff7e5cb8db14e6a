"""The harness every `ddnn faults` scenario runs on: one deployment under test, with the
offline reference its decisions are checked against.

A scenario (outage_scenarios.py, hostile_scenarios.py beside this module) is a function of a
`Harness` that streams samples through the deployment (`segment`), does harm meanwhile
(`kill`, `restart`, `pause`, rogue clients logged in as one of its accounts: `login`), and
returns report rows (`row`: the checks every scenario makes, with `health` for what hostile
input may not change). The decisions a row counts as missing, twice or repeated are those an
independent observer saw (`DecisionObserver`: a client of its own on the observer account,
subscribed to the decisions for the whole run), not the driver that ticks the samples; the
service deaths, those the fleet saw (processes that exited without being killed on purpose).
`Sizes` is how much the hostile scenarios send. Every fault is noted with its time (`mark`,
`events`), so that `timeline` can draw a scenario with its faults on it (`ddnn faults
--plot`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddnn.core.roles import Role
from ddnn.live.access import OBSERVER, login
from ddnn.live.broker.running import RunningBroker
from ddnn.live.broker.start import start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.rates import DEFAULT_FRAME_RATE
from ddnn.live.service import STATUS_EVERY
from ddnn.live.transport import Received, UntilEcho
from ddnn.live.wire import Decision, Topics, WireError, decode, encode
from ddnn.ops.fleet import Driver, Fleet, Reference, summarize

if TYPE_CHECKING:  # drawing (matplotlib) only when asked for: `timeline` imports it
    from ddnn.ops.live_plots import Event, Point

RATE = 25.0  # samples per second while faults happen
SCORE_DEADLINE = 0.5  # the aggregator's wait for device scores, seconds
CLOUD_DEADLINE = 1.5


@dataclass(frozen=True)
class Sizes:
    """How much the hostile and the long outage scenarios send, or last: the issues' bars by
    default, less with `quick()` (tests, a first try)."""

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
    storm_kills: int = 20  # the aggregator SIGKILLed this many times, at random moments ...
    storm_samples: int = 3000  # ... over this many samples ...
    storm_rate: float = 30.0  # ... at this many frames per second
    outage_seconds: float = 30.0  # the broker down this long, mid-stream

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            fuzz_per_topic=100,
            poison_rounds=1,
            flood_seconds=5.0,
            flood_samples=40,
            flood_rate=100.0,
            replayed=50,
            storm_kills=3,
            storm_samples=150,
            outage_seconds=3.0,
        )


OBSERVER_WAIT = 3.0  # seconds a row waits for the observer to see its samples' decisions


class DecisionObserver:
    """An independent party counting the decisions of a deployment: its own client, logged
    in with the observer account (`settings`), subscribed to the decisions topic, drained by
    a thread of its own from before the first scenario to after the last. Per sample it
    keeps a digest of the first decision seen and counts each later one as the same again
    (`repeated`: a QoS 1 redelivery) or another (`twice`: the sample decided twice)."""

    def __init__(self, settings: BrokerSettings, topics: Topics) -> None:
        client_id = f"ddnn-faults-decisions-{os.getpid()}-{secrets.token_hex(4)}"
        self.client = MqttClient(settings, client_id)
        self.client.subscribe(topics.decisions)
        self.client.connect()
        self.first: dict[int, bytes] = {}  # sample -> digest of its first decision seen
        self.repeated: Counter[int] = Counter()
        self.twice: Counter[int] = Counter()
        self.malformed = 0  # payloads on the decisions topic that are no valid decision
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="decision-observer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            if (item := self.client.get(timeout=0.2)) is not None:
                self.file(item[1])

    def file(self, payload: bytes) -> None:
        """Count one payload received on the decisions topic."""
        try:
            message = decode(payload)
        except WireError:
            message = None
        with self._lock:
            if not isinstance(message, Decision):
                self.malformed += 1
                return
            digest = hashlib.blake2b(encode(message), digest_size=16).digest()
            if message.sample not in self.first:
                self.first[message.sample] = digest
            elif self.first[message.sample] == digest:
                self.repeated[message.sample] += 1
            else:
                self.twice[message.sample] += 1

    def counts(self, samples: Iterable[int], wait: float = OBSERVER_WAIT) -> dict[str, int]:
        """Of `samples` (ticked): those with no decision seen (`decisions_missing`, after
        waiting at most `wait` s for them: the observer reads apart from the driver, a
        moment behind it), decisions seen again with another content (`decisions_twice`)
        and with the same (`decisions_repeated`)."""
        wanted = list(samples)
        deadline = time.monotonic() + wait
        while any(k not in self.first for k in wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            return {
                "decisions_missing": sum(k not in self.first for k in wanted),
                "decisions_twice": sum(self.twice[k] for k in wanted),
                "decisions_repeated": sum(self.repeated[k] for k in wanted),
            }

    def totals(self) -> dict[str, int]:
        """Over the whole run: samples with a decision seen, the counts of `counts`, and the
        payloads on the decisions topic that were no valid decision."""
        with self._lock:
            return {
                "samples_decided": len(self.first),
                "decisions_twice": self.twice.total(),
                "decisions_repeated": self.repeated.total(),
                "malformed": self.malformed,
            }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.client.close()


class OwnBroker:
    """The broker a faults run starts itself (`kind`, `start_broker`'s; its accounts
    `access`, its retained messages and sessions in `state` across restarts), which
    scenarios stop and start again."""

    def __init__(self, access: Path, state: Path, kind: str = "auto") -> None:
        self.access, self.state = access, state
        self.running: RunningBroker = start_broker(kind=kind, access=access, state=state)

    def restart(self, down: float, frame_rate: float | None = None) -> float:
        """Stop it, start it again `down` seconds later on the same port (its buckets sized
        for `frame_rate`; None: as they were); when it was back (monotonic)."""
        if frame_rate is None:
            frame_rate = self.running.frame_rate
        self.running.stop()
        time.sleep(down)
        self.running = start_broker(
            port=self.running.port,
            kind=self.running.kind,
            access=self.access,
            state=self.state,
            frame_rate=DEFAULT_FRAME_RATE if frame_rate is None else frame_rate,
        )
        return time.monotonic()


@dataclass
class Harness:
    """One deployment under test: broker, fleet, driver, and the offline reference."""

    fleet: Fleet
    driver: Driver
    reference: Reference
    roles: list[Role]
    access: Path  # the deployment's accounts: a rogue logs in with a role's own
    broker: OwnBroker
    sizes: Sizes = field(default_factory=Sizes)
    next_sample: int = 0
    killed_at: dict[str, float] = field(default_factory=dict)  # monotonic, latest kill
    broker_back_at: float | None = None
    # (monotonic, what was done): one per fault a scenario does, so as many as it defines
    events: list[tuple[float, str]] = field(default_factory=list)
    _examples: dict[str, bytes] | None = None
    # counts the decisions apart from the driver, from the harness's start (`__post_init__`)
    observer: DecisionObserver = field(init=False)
    _deaths_reported: int = 0  # of the fleet's `deaths`, those an earlier row reported

    def __post_init__(self) -> None:
        self.observer = DecisionObserver(self.login(OBSERVER), self.driver.topics)

    def close(self) -> None:
        """Stop the observer (after the last scenario)."""
        self.observer.close()

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

    def devices(self) -> list[Role]:
        """The device roles of the deployment, in order."""
        return [r for r in self.roles if r.tier == "device"]

    def mark(self, what: str, at: float | None = None) -> None:
        """Note a fault done at `at` (monotonic; default: now), for the time lines."""
        self.events.append((time.monotonic() if at is None else at, what))

    def kill(self, role: Role) -> None:
        self.driver.dead.add(role)
        self.fleet.kill(role)
        self.killed_at[role] = time.monotonic()
        self.mark(f"kill {role}", self.killed_at[role])

    def restart(self, role: Role) -> None:
        self.fleet.restart(role)
        self.driver.dead.discard(role)
        self.mark(f"restart {role}")

    def restart_with(self, role: Role, option: str, value: str | bool | None) -> None:
        """Kill `role` and start it again with `option` set to `value` (True: the flag;
        False or None: without it; else followed by `value`), once the broker has said it
        is gone (its will: the new process must not find it still online)."""
        argv = self.fleet.argv[role]
        self.kill(role)
        killed = self.killed_at[role]
        while self.detected(role, killed) is None and time.monotonic() - killed < 10:
            self.driver.pump(0.05)
        while option in argv:
            i = argv.index(option)
            flag = i + 1 == len(argv) or argv[i + 1].startswith("--")
            del argv[i : i + (1 if flag else 2)]
        if value is True:
            argv.append(option)
        elif value:
            argv += [option, value]
        self.restart(role)
        self.driver.wait_online([role])

    def size_broker(self, frame_rate: float) -> None:
        """Give a broker with token buckets of its own (`RunningBroker.frame_rate`: amqtt)
        buckets sized for `frame_rate`: it restarts, and every service is back online."""
        if self.broker.running.frame_rate not in (None, frame_rate):
            self.broker.restart(0.0, frame_rate)
            self.driver.wait_online(self.roles)

    def pause(self, role: Role, seconds: float) -> None:
        """Stop `role` for `seconds` (without waiting): a straggler (`Fleet.pause`)."""
        self.fleet.pause(role, seconds)
        self.mark(f"pause {role} {seconds:g} s")

    def timeline(self, since: float) -> tuple[list[Point], list[Event]]:
        """The decisions that arrived from `since` (monotonic) on and the faults done since,
        timed from `since`: what `live_plots.fault_timeline` draws. Each decision is scored
        as `row` scores it, and the offline reference's decision beside it only where
        `Reference.compare` has one (same devices, not degraded)."""
        from ddnn.ops.live_plots import Event, Point

        driver, labels = self.driver, self.reference.labels
        points = []
        for k, at in driver.decided_at.items():
            if at < since:
                continue
            d = driver.decisions[k]
            right = d.class_index == labels[k % len(labels)] if d.decided else None
            points.append(Point(at - since, d.latency_ms, right, self._offline_right(d)))
        events = [Event(t - since, what) for t, what in self.events if t >= since]
        return points, events

    def _offline_right(self, d: Decision) -> bool | None:
        """Whether the offline reference decides `d`'s sample right with `d`'s devices."""
        if not d.decided or d.degraded or not d.devices:
            return None
        if d.upper_devices is not None and d.upper_devices != d.devices:
            return None
        classes, _ = self.reference.decide(tuple(d.devices))
        row = d.sample % len(self.reference.labels)
        return bool(classes[row] == self.reference.labels[row])

    def login(self, account: str) -> BrokerSettings:
        """Broker settings logged in as `account` of the deployment."""
        return login(self.driver.client.settings, self.access, account)

    def health(self) -> dict[str, Any]:
        """What no hostile input may change (besides the service deaths every `row` counts):
        reasons counted per service (at most 64 keys, from a status sent after this call),
        the largest resident memory of a service, all of it and its own (`Memory`)."""
        live = [r for r in self.roles if r not in self.driver.dead]
        asked = time.time()
        deadline = time.monotonic() + STATUS_EVERY + 2.0
        while time.monotonic() < deadline and any(
            r not in self.driver.status or self.driver.status[r].t < asked for r in live
        ):
            self.driver.pump(0.1)
        keys = [len(self.driver.status[r].rejected) for r in live if r in self.driver.status]
        memory = [m for r in live if (m := self.fleet.memory_mb(r)) is not None]
        return {
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
        """The report line of a stretch of samples, with the checks every scenario makes:
        what the observer saw of their decisions (`DecisionObserver.counts`), and the
        service processes that died by themselves since the previous row (`service_deaths`,
        `Fleet.reap`)."""
        seen = self.observer.counts(samples)
        deaths = self.fleet.reap()
        died, self._deaths_reported = len(deaths) - self._deaths_reported, len(deaths)
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
            **seen,
            "service_deaths": died,
            **extra,
        }


def received(observer: MqttClient, topics: Topics, timeout: float = 10.0) -> list[Received]:
    """What `observer` (the observer account, subscribed to the deployment, its own probe
    topic included) has received up to now (`UntilEcho`)."""
    return list(UntilEcho(observer, f"{topics.hello}/{OBSERVER}/{observer.client_id}", timeout))
