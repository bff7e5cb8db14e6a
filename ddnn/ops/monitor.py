"""What `ddnn monitor` knows of a running deployment, from what its services publish.

The monitor reads what the `observer` account may read and publishes nothing: the retained
statuses (with their counters and refusals by reason, or a dead service's last will) and the
decisions. `Monitor` folds them into a `snapshot()`, one JSON-ready document (`SNAPSHOT_KEYS`),
which the dashboard renders and `ddnn monitor --json` prints. This module does no I/O but for
`open_client` and `watch`; the folding is plain functions of the messages and the clock, so
tests drive it directly. Its memory is bounded whatever arrives (`MAX_ROLES`, `MAX_INSTANCES`,
`MAX_NAMES`, `MAX_REASONS`, `MAX_NAME`, `MAX_KEPT`): it may listen to an anonymous broker.

Design: docs/design/monitor.md (each bound, and what happens past it).
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ddnn.core.config import EXIT_ORDER
from ddnn.core.errors import DDNNError
from ddnn.core.roles import Role
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service import STATUS_EVERY, Recent
from ddnn.live.transport import Received, Transport
from ddnn.live.wire import Decision, Refused, Status, Topics, decode, encode
from ddnn.ops.stats import bytes_per_device, percentiles

MAX_ROLES = 256
MAX_INSTANCES = 4  # processes per role remembered (a restarted service, cloud replicas)
MAX_NAMES = 64  # counters, and refusal reasons, kept of one status
MAX_REASONS = 32  # reasons of degraded, undecided and malformed messages; then "other"
MAX_NAME = 80  # characters of a counter's or a reason's name
MAX_KEPT = 50_000  # decisions kept of the window (the live system decides ~500/s at most)
MAX_VERSIONS = 8  # model versions remembered, when listening to every one
SILENT_AFTER = 3 * STATUS_EVERY  # online, but no status for this long: "silent" (as the
# aggregator counts a device offline after it)
DUPLICATES = 4096  # sample ids remembered (with a digest of their decision) to tell a
# decision delivered again (QoS 1) from a sample decided twice, with another content
FAILED = "a message the monitor failed on (a bug)"
OTHER = "other"
SNAPSHOT_KEYS = {
    "deployment": "the deployment watched",
    "model_versions": "the model versions heard from (the one asked for, or all of them)",
    "broker": "the broker's URL",
    "at": "Unix time of the snapshot",
    "window_s": "seconds of decisions the figures cover (--window)",
    "listened_s": "seconds since the monitor started listening",
    "services": "role -> state (online, offline, silent: online but no status for "
    f"{SILENT_AFTER:g} s, unseen: named by --artifacts, never heard), since (Unix time of "
    "the change the monitor saw; null: already so when it started), age_s (seconds since "
    "its last status), instances (processes heard), counters and rejected (refusals by "
    "reason), each summed over its processes' latest statuses",
    "decisions": "of the window: count, per_second, exit_fraction {tier: share of decided "
    "samples, abstentions at their exit}, latency_ms {tier: {p50, p99}}, "
    "bytes_per_device_per_sample (mean), degraded, undecided, abstained, reasons "
    "{degraded: {reason: n}, undecided: {reason: n}}, capped (more came than kept); since "
    "the start: total, decisions_repeated (a sample's decision delivered again, the same), "
    "decisions_twice (a decision for a sample decided already, with another content: the "
    "sample decided twice)",
    "malformed": "reason -> messages since the start that were not a valid status or "
    "decision on their topic",
    "dropped": "messages the client dropped, its inbox full (a flood)",
}


def name(text: str) -> str:
    """`text` safe to show and to key a count by: printable, at most `MAX_NAME` characters
    (a hostile reason could otherwise hold terminal escapes, or a megabyte)."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: MAX_NAME + 1])
    return clean if len(clean) <= MAX_NAME else clean[: MAX_NAME - 3] + "..."


def count(counter: Counter[str], reason: str, limit: int = MAX_REASONS) -> None:
    """Count `reason` in `counter`, which holds at most `limit` names (then "other")."""
    reason = name(reason)
    if reason not in counter and len(counter) >= limit:
        reason = OTHER
    counter[reason] += 1


def kept(counts: dict[str, int]) -> dict[str, int]:
    """The largest `MAX_NAMES` of a status's counts, their names made safe."""
    largest = sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_NAMES]
    return {name(k): v for k, v in largest}


@dataclass
class Process:
    """One process of a role, as its latest status describes it."""

    state: str
    heard: float  # monotonic, when its latest status came
    counters: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class ServiceView:
    """A role's processes (by instance, the least recently heard first) and its state."""

    processes: OrderedDict[str, Process] = field(default_factory=OrderedDict)
    since: float | None = None  # Unix time of the last change of state the monitor saw

    def online(self) -> bool:
        return any(p.state == "online" for p in self.processes.values())

    def state(self, now: float) -> str:
        if not self.processes:
            return "unseen"
        if not self.online():
            return "offline"
        heard = max(p.heard for p in self.processes.values() if p.state == "online")
        return "online" if now - heard <= SILENT_AFTER else "silent"

    def update(self, status: Status, now: float, wall: float, fresh: bool) -> None:
        """File `status`, heard at monotonic `now` and Unix time `wall`; `fresh`: sent after
        the monitor started (not the retained status it found), so that a first status of
        the role is a change the monitor saw happen too."""
        before = self.online() if self.processes else None
        process = self.processes.pop(status.instance, None) or Process(status.state, now)
        process.state, process.heard = status.state, now
        if status.counters or status.rejected:  # a last will carries none: keep the last
            process.counters, process.rejected = kept(status.counters), kept(status.rejected)
        self.processes[status.instance] = process
        while len(self.processes) > MAX_INSTANCES:
            self.processes.popitem(last=False)
        if self.online() != before and (before is not None or fresh):
            self.since = wall

    def view(self, now: float) -> dict[str, Any]:
        counters: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        for p in self.processes.values():
            counters.update(p.counters)
            rejected.update(p.rejected)
        heard = max((p.heard for p in self.processes.values()), default=None)
        return {
            "state": self.state(now),
            "since": self.since,
            "age_s": None if heard is None else round(now - heard, 1),
            "instances": len(self.processes),
            "counters": dict(sorted(counters.items())),
            "rejected": dict(rejected.most_common()),
        }


class Seen(NamedTuple):
    """What the monitor keeps of one decision."""

    at: float  # monotonic, when it came
    exit: str | None  # None: undecided
    latency_ms: float | None
    device_bytes: float | None
    degraded: str | None  # the reason, when degraded
    undecided: str | None  # the reason, when undecided
    abstained: bool


class Monitor:
    """The folded picture of one deployment (module doc). `receive(topic, payload, now,
    wall)` files one message; `snapshot(now)` is the document. `model_version` None: every
    model version of the deployment. `roles`: those expected (from an export), shown as
    "unseen" until heard. `started` (monotonic) and `started_wall` (Unix time): when it
    began listening (default: now). A status sent before that is one the broker kept."""

    def __init__(
        self,
        deployment: str,
        model_version: str | None = None,
        window: float = 10.0,
        roles: Iterable[Role] = (),
        broker: str = "",
        started: float | None = None,
        started_wall: float | None = None,
    ) -> None:
        self.deployment = deployment
        self.model_version = model_version
        Topics(deployment, model_version or "any")  # refuses a name no topic can hold
        self.window = window
        self.broker = broker
        self.begin(started, started_wall)
        self.services: dict[Role, ServiceView] = {Role(r): ServiceView() for r in roles}
        self.versions: dict[str, Topics] = {}
        self.kept: deque[Seen] = deque(maxlen=MAX_KEPT)
        self.recent: Recent[int] = Recent(DUPLICATES)  # sample -> its decision's digest
        self.reasons: dict[str, str] = {}  # one string object per reason: kept decisions share it
        self.total = 0
        self.repeated = 0
        self.twice = 0
        self.malformed: Counter[str] = Counter()
        self.dropped = 0  # set by whoever feeds it: the client's inbox overflows

    def begin(self, started: float | None = None, started_wall: float | None = None) -> None:
        """Count from now (or from monotonic `started`, Unix time `started_wall`): where the
        monitor starts listening, once subscribed."""
        self.started = time.monotonic() if started is None else started
        self.started_wall = time.time() if started_wall is None else started_wall

    def filters(self) -> list[str]:
        """The topic filters to subscribe to: the statuses and the decisions."""
        root = f"ddnn/{self.deployment}/{self.model_version or '+'}"
        return [f"{root}/status/+", f"{root}/decisions"]

    # -- filing -----------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, now: float, wall: float) -> None:
        """File one message (monotonic `now`, Unix time `wall`); count one that is not a valid
        status or decision on its topic under its reason, and nothing else."""
        try:
            message = decode(payload)
            self._topics(topic).check(topic, message)
            if isinstance(message, Status):
                self._status(message, now, wall)
            elif isinstance(message, Decision):
                self._decision(message, now)
            else:  # `check` lets through only what the topic carries: cannot happen
                raise Refused("a message of another kind than its topic's")
        except Refused as e:
            count(self.malformed, e.reason)
        except Exception:  # noqa: BLE001 - no message may stop the monitor
            count(self.malformed, FAILED)

    def _topics(self, topic: str) -> Topics:
        """The topics of the model version `topic` belongs to (the only one asked for, or
        any of at most `MAX_VERSIONS`)."""
        version = self.model_version or topic.split("/")[2]
        topics = self.versions.get(version)
        if topics is None:
            if len(self.versions) >= MAX_VERSIONS:
                raise Refused("a model version beyond the limit")
            try:
                topics = self.versions[version] = Topics(self.deployment, version)
            except DDNNError:
                raise Refused("a topic that names no model version") from None
        return topics

    def _status(self, status: Status, now: float, wall: float) -> None:
        role = Role(status.role)  # validated by the wire already
        view = self.services.get(role)
        if view is None:
            if len(self.services) >= MAX_ROLES:
                raise Refused("a role beyond the limit")
            view = self.services[role] = ServiceView()
        view.update(status, now, wall, fresh=status.t > self.started_wall)

    def _decision(self, d: Decision, now: float) -> None:
        """File `d`; one for a sample already seen is counted apart, never hidden: the same
        decision delivered again (`repeated`), or another one (`twice`, a broken promise)."""
        digest = hash(encode(d))  # its whole content, as the wire carries it
        if d.sample in self.recent:
            if self.recent.get(d.sample) == digest:
                self.repeated += 1
            else:
                self.twice += 1
            return
        self.recent.add(d.sample, digest)
        self.total += 1
        self._expire(now)
        self.kept.append(
            Seen(
                at=now,
                exit=d.exit if d.decided else None,
                # the wire refuses NaN, infinities and negative byte counts
                latency_ms=d.latency_ms,
                device_bytes=bytes_per_device(d) if d.decided else None,
                degraded=self._reason(d.reason) if d.decided and d.degraded else None,
                undecided=None if d.decided else self._reason(d.reason),
                abstained=d.abstained,
            )
        )

    def _reason(self, reason: str | None) -> str:
        text = name(reason or "(no reason given)")
        if text not in self.reasons:
            if len(self.reasons) >= MAX_REASONS:
                return OTHER
            self.reasons[text] = text
        return self.reasons[text]

    def _expire(self, now: float) -> None:
        while self.kept and self.kept[0].at < now - self.window:
            self.kept.popleft()

    # -- the document -----------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The monitor's picture at monotonic time `now` (module doc; keys: SNAPSHOT_KEYS)."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        return {
            "deployment": self.deployment,
            "model_versions": [self.model_version] if self.model_version else [*self.versions],
            "broker": self.broker,
            "at": round(self.started_wall + now - self.started, 3),
            "window_s": self.window,
            "listened_s": round(now - self.started, 2),
            "services": {
                role: self.services[role].view(now)
                for role in sorted(self.services, key=_role_order)
            },
            "decisions": self._decisions(now),
            "malformed": dict(self.malformed.most_common()),
            "dropped": self.dropped,
        }

    def _decisions(self, now: float) -> dict[str, Any]:
        seen = list(self.kept)
        capped = len(seen) == self.kept.maxlen
        span = min(self.window, now - self.started)
        if capped:
            span = min(span, now - seen[0].at)
        decided = [s for s in seen if s.exit is not None]
        exits = Counter(s.exit for s in decided)
        tiers = [t for t in EXIT_ORDER if exits[t]]
        device_bytes = [s.device_bytes for s in decided if s.device_bytes is not None]
        degraded = Counter(s.degraded for s in decided if s.degraded is not None)
        undecided = Counter(s.undecided for s in seen if s.undecided is not None)
        return {
            "count": len(seen),
            "per_second": round(len(seen) / span, 2) if span > 0 else None,
            "exit_fraction": {t: round(exits[t] / len(decided), 4) for t in tiers},
            "latency_ms": {t: percentiles(_latencies(decided, t)) for t in tiers},
            "bytes_per_device_per_sample": (
                round(sum(device_bytes) / len(device_bytes), 2) if device_bytes else None
            ),
            "degraded": sum(degraded.values()),
            "undecided": sum(undecided.values()),
            "abstained": sum(s.abstained for s in decided),
            "reasons": {
                "degraded": dict(degraded.most_common()),
                "undecided": dict(undecided.most_common()),
            },
            "capped": capped,
            "total": self.total,
            "decisions_repeated": self.repeated,
            "decisions_twice": self.twice,
        }


def _latencies(decided: list[Seen], tier: str) -> list[float]:
    return [s.latency_ms for s in decided if s.exit == tier and s.latency_ms is not None]


def _role_order(role: Role) -> tuple[int, int]:
    """Devices by index, then the aggregator, the edges, the cloud, the capture."""
    tiers = ("device", "aggregator", "edge", "cloud", "capture")
    return tiers.index(role.tier), role.index or 0


# -- listening ---------------------------------------------------------------------------
def open_client(settings: BrokerSettings, monitor: Monitor, timeout: float = 10.0) -> MqttClient:
    """A client subscribed to the monitor's topics, connected (or a `DDNNError` saying why
    not, a refused subscription included), its network in the caller's thread; the
    monitor counts from then on."""
    client_id = f"ddnn-monitor-{monitor.deployment[:64]}-{os.getpid()}-{secrets.token_hex(4)}"
    client = MqttClient(settings, client_id, threaded=False)
    for topic_filter in monitor.filters():
        client.subscribe(topic_filter, qos=1)
    client.connect(timeout=timeout)
    monitor.begin()
    return client


def watch(
    client: Transport,
    monitor: Monitor,
    seconds: float | None,
    every: float = 1.0,
    show: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Feed `monitor` what `client` receives for `seconds` (None: until `stop()` says so),
    calling `show(snapshot)` every `every` seconds; the last snapshot."""
    end = None if seconds is None else time.monotonic() + seconds
    shown = time.monotonic()
    while not stop() and (end is None or time.monotonic() < end):
        wait = min(every, max(0.0, shown + every - time.monotonic()))
        if end is not None:
            wait = min(wait, max(0.0, end - time.monotonic()))
        item: Received | None = client.get(timeout=wait)
        if item is not None:
            monitor.receive(*item, time.monotonic(), time.time())
        if show is not None and time.monotonic() - shown >= every:
            shown = time.monotonic()
            monitor.dropped = client.dropped
            show(monitor.snapshot())
    monitor.dropped = client.dropped
    return monitor.snapshot()
