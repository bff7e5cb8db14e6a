"""What every live DDNN process shares: connection, liveness, the message loop, counters.

A service subclass names its role and declares a handler per message kind (`handles`); the
protocol table (ddnn/live/protocol.py) says what it subscribes to and which kinds it takes,
and this base refuses any other kind in one place. It connects (retrying until the broker is
up), announces the role with a retained `online` status and a last will saying `offline`,
runs one loop over the client's queue (paho's callbacks never do work), calls `poll()` for
deadlines, and stops on SIGINT/SIGTERM with a final `offline`. Scores and feature maps (and
ticks) go at QoS 0, the rest at QoS 1. Bad input is counted under its reason and logged,
never fatal; every topic read has a token bucket (`limit_rate`) against floods.

Design: docs/design/live-service.md (why QoS 0 for data, logging bad input, rate limits).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from ddnn.core.config import FeatureFormat
from ddnn.core.manifest import Manifest
from ddnn.core.roles import Role
from ddnn.live.memory import MemoryBus
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.protocol import PROTOCOL, Protocol, read_kinds, subscriptions
from ddnn.live.rates import DEFAULT_FRAME_RATE, TopicRates
from ddnn.live.transport import Transport, UntilEcho, Will
from ddnn.live.wire import Features, Message, Refused, Status, Topics, decode, encode

log = logging.getLogger("ddnn")
LOUD_REPEATS = 5  # warnings per reason before they drop to debug level
MAX_REASONS = 64  # refusal reasons counted by name; any further one counts as "other"
INTERNAL_ERROR = "an error the service survived (a bug: see the log)"
STATUS_EVERY = 2.0  # seconds between status messages with the counters (and liveness)
RATE_REASONS = 16  # topics over their rate named in a status, the most dropped first
DATA_KINDS = {"scores", "features"}  # published at QoS 0 (module doc); the rest at QoS 1
# A sample captured (ticked) further than this from now, by the wall clock, is refused:
# clocks in sync within this many seconds, as NTP keeps them, and a replayed stale tick or
# score is cheap to turn away.
WALL_SKEW = 30.0
V = TypeVar("V")
Handler = Callable[[Any, Any], None]  # a service method taking one message
H = TypeVar("H", bound=Handler)


class Recent(Generic[V]):
    """The last `limit` sample ids seen, each with what the service keeps of it (its answer,
    or nothing): what a service remembers to drop, or answer cheaply, late repeats."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[int, V | None] = OrderedDict()

    def add(self, sample: int, value: V | None = None) -> None:
        self._ids[sample] = value
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def get(self, sample: int) -> V | None:
        return self._ids.get(sample)

    def __contains__(self, sample: object) -> bool:
        return sample in self._ids


class KeptMaps:
    """Arrays kept by sample until someone asks for them: at most `limit`, for at most
    `seconds` each. A device and an edge keep their feature maps this way for the tier
    above; a capturing device its frames for their sample's decision."""

    def __init__(self, seconds: float, limit: int = 1024) -> None:
        self.seconds = seconds
        self.limit = limit
        self._maps: OrderedDict[int, tuple[float, np.ndarray]] = OrderedDict()

    def put(self, sample: int, fmap: np.ndarray) -> int:
        """Keep `fmap`; returns how many older maps were dropped to stay within the limit."""
        self._maps[sample] = (time.monotonic(), fmap)
        dropped = 0
        while len(self._maps) > self.limit:
            self._maps.popitem(last=False)
            dropped += 1
        return dropped

    def take(self, sample: int) -> np.ndarray | None:
        kept = self._maps.pop(sample, None)
        return None if kept is None else kept[1]

    def expire(self, now: float) -> int:
        """Drop the maps older than `seconds` (by the monotonic clock); returns how many."""
        dropped = 0
        while self._maps and now - next(iter(self._maps.values()))[0] > self.seconds:
            self._maps.popitem(last=False)
            dropped += 1
        return dropped


class Rejected(Refused):
    """A well-formed message that this service cannot use (unknown device, wrong shape)."""


def check_fresh(t: float, what: str) -> None:
    """Refuse `what` ("a tick", "scores": one of a fixed few, it names the counted reason)
    captured at Unix time `t` further than `WALL_SKEW` from now."""
    if not abs(t - time.time()) <= WALL_SKEW:
        raise Rejected(f"{what} captured too far from now", f"{t - time.time():+.0f} s")


Broker = BrokerSettings | MemoryBus  # a real broker, or the in-process one of fast tests


def open_transport(
    broker: Broker, client_id: str, will: Will, keep_session: bool = True
) -> Transport:
    if isinstance(broker, MemoryBus):
        return broker.client(client_id, will=will)  # it keeps no sessions
    # the network in the service's own loop (ddnn/live/mqtt/client.py says why)
    return MqttClient(broker, client_id, will=will, threaded=False, keep_session=keep_session)


def handles(kind: type[Message]) -> Callable[[H], H]:
    """Declare a service method the handler of the messages of `kind`."""

    def mark(method: H) -> H:
        method.handles = kind  # type: ignore[attr-defined]
        return method

    return mark


class Service:
    """The base of every service. `run()` serves until stopped; tests that drive a service
    in-process call `open()`, hand it messages with `receive()`, call `poll()` with the time
    they want, and `close()`. `keep_session`: whether the broker keeps the MQTT session over
    a lost connection (not for a member of a shared subscription: ddnn/live/mqtt/client.py)."""

    role: Role
    handlers: ClassVar[dict[type[Message], Handler]] = {}  # collected from `handles`
    protocol: Protocol = PROTOCOL
    group: str | None = None  # the replicas' shared-subscription group of a cloud replica
    replicated: bool = False  # whether the cloud runs as replicas (ddnn/live/protocol.py)
    capturing: bool = False  # whether it takes part in capturing hard examples (same)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = {f.handles: f for f in vars(cls).values() if hasattr(f, "handles")}
        cls.handlers = {**cls.handlers, **declared}

    def __init__(
        self, manifest: Manifest, broker: Broker, deployment: str, keep_session: bool = True
    ) -> None:
        self.manifest = manifest
        self.topics = Topics(deployment, manifest.model_version)
        self.config = manifest.ddnn_config()
        self.model = self.config.model
        self.reads: set[type[Message]] = set()  # the kinds it takes: set on `open`
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._connections = 0  # the transport's connections when last announced
        self.announced = False  # said online: on stopping, it says offline
        self.log = logging.getLogger(f"ddnn.{self.role}")
        # The client id too: unique per process, and short enough for any broker.
        self.instance = f"ddnn-{deployment[:64]}-{self.role}-{os.getpid()}-{secrets.token_hex(4)}"
        offline = Status(role=self.role, state="offline", t=time.time(), instance=self.instance)
        will = Will(self.topics.status(self.role), encode(offline))
        self.client = open_transport(broker, self.instance, will, keep_session)
        self.rates: TopicRates | None = None
        self._rate_warned: Counter[str] = Counter()  # drops per topic when last logged
        if isinstance(self.client, MqttClient):  # in-process tests hand their floods whole
            self.limit_rate(DEFAULT_FRAME_RATE)

    def limit_rate(self, frame_rate: float) -> None:
        """Give every topic this service reads a token bucket sized for `frame_rate`
        samples per second (0: none), so that no account's flood crowds out the others'
        messages (ddnn/live/rates.py): the transport asks it before a message takes a
        place in its inbox, before anything is decoded. A service over MQTT has one for
        `DEFAULT_FRAME_RATE` from the start; one on the in-process bus, only when asked."""
        self.rates = TopicRates.for_frame_rate(frame_rate)
        self.client.admit = None if self.rates is None else self.rates.admit

    def subscriptions(self) -> list[str]:
        """What the protocol table has this service's role read in its mode."""
        return subscriptions(
            self.role,
            self.model,
            self.topics,
            self.group,
            self.replicated,
            self.protocol,
            self.capturing,
        )

    def handle(self, topic: str, message: Message) -> None:
        """One validated message to its handler; one of a kind the protocol table does not
        have this service read is refused, as a handler refuses one that does not fit."""
        handler = self.handlers.get(type(message)) if type(message) in self.reads else None
        if handler is None:
            raise Rejected("a message of a kind this service does not take", message.kind)
        handler(self, message)

    # -- what subclasses provide -------------------------------------------------------
    def poll(self, now: float) -> float | None:
        """Act on deadlines; return when to be called next (None: no deadline pending)."""
        return None

    # -- the loop ------------------------------------------------------------------------
    def publish(self, topic: str, message: Message, retain: bool = False) -> None:
        """Publish `message` (at the QoS of its kind: module doc); one the transport dropped
        (disconnected, its queue full) is counted. Decisions, which must not be lost, go
        through the aggregator's outbox instead (aggregator/outbox.py)."""
        qos = 0 if message.kind in DATA_KINDS else 1
        if not retain:  # a sample's messages; not the statuses, which come with time
            self.counters[f"sent_{message.kind}"] += 1
        if not self.client.publish(topic, encode(message), qos=qos, retain=retain):
            self.counters["publish_failed"] += 1

    def send_kept(self, kept: KeptMaps, sample: int, fmt: FeatureFormat) -> None:
        """Publish the kept feature map of `sample` (encoded as `fmt`) to the tier above."""
        fmap = kept.take(sample)
        if fmap is None:
            self.counters["features_expired"] += 1
            if self.counters["features_expired"] <= LOUD_REPEATS:
                self.log.warning("asked for the features of sample %d, no longer kept", sample)
            return
        self.publish(self.topics.features(self.role), Features.of(sample, self.role, fmap, fmt))
        self.counters["features_sent"] += 1

    def reject(self, reason: str, detail: str = "") -> None:
        """Count a refused message under `reason` (one of a fixed set of templates) and log
        it with its `detail`, loudly only the first few times per reason."""
        if reason not in self.rejected and len(self.rejected) >= MAX_REASONS:
            reason = "other"
        self.rejected[reason] += 1
        n = self.rejected[reason]
        level = logging.WARNING if n <= LOUD_REPEATS else logging.DEBUG
        if self.log.isEnabledFor(level):
            self.log.log(level, "rejected a message: %s: %s (%d so far)", reason, detail[:300], n)

    def run(self, connect_timeout: float = 30.0) -> None:
        """Serve until SIGINT/SIGTERM (or `stop()`)."""
        self._install_signal_handlers()
        try:
            self.open(connect_timeout)
            self._loop()
        finally:
            self.close()

    def open(self, connect_timeout: float = 30.0) -> None:
        """Subscribe, connect (or raise `DDNNError` saying why not) and announce `online`."""
        self.reads = read_kinds(self.role, self.replicated, self.protocol, self.capturing)
        if missing := {k.__name__ for k in self.reads if k not in self.handlers}:
            raise TypeError(f"{type(self).__name__} has no handler for {sorted(missing)}")
        for topic in self.subscriptions():
            self.client.subscribe(topic, qos=1)
        self.client.connect(timeout=connect_timeout)
        self.log.info("online at %s under %s", self.client.url, self.topics.root)
        self._connections = self.client.connections
        self.before_online()
        self.announce("online")
        self.announced = True

    def before_online(self) -> None:
        """What a service checks once connected, before it says it is online."""

    def catch_up(self, timeout: float = 5.0) -> None:
        """Handle what the broker holds for this service's subscriptions (their retained
        messages) before going on: a probe published now comes back after all of it."""
        probe = f"{self.topics.hello}/{self.role}/{self.instance}"
        self.client.subscribe(probe, qos=1)
        held = UntilEcho(self.client, probe, timeout)
        for item in held:
            self.receive(*item)
        if not held.echoed:
            self.log.warning("the broker did not echo a probe within %g s", timeout)

    def close(self) -> None:
        """Announce `offline` (if it said online) and disconnect cleanly."""
        if self.announced:
            with self.guard():
                self.announce("offline")
        self.client.close()
        self.log.info("%s stopped; %s", self.role, self.summary())

    def announce(self, state: str) -> None:
        """Publish the retained status with the counters so far."""
        status = Status(
            role=self.role,
            state=state,  # type: ignore[arg-type]
            t=time.time(),
            counters=dict(self.counters) | self._transport_counters() | self._rate_counters(),
            rejected=dict(self.rejected.most_common(200)) | self._rate_reasons(),
            instance=self.instance,
        )
        self.publish(self.topics.status(self.role), status, retain=True)

    def _transport_counters(self) -> dict[str, int]:
        counts = {"publish_denied": self.client.denied, "inbox_dropped": self.client.dropped}
        return {name: n for name, n in counts.items() if n}

    def _rate_counters(self) -> dict[str, int]:
        """`rate_dropped`: the messages dropped over their account's rate, all topics."""
        total = 0 if self.rates is None else self.rates.dropped.total()
        return {"rate_dropped": total} if total else {}

    def _rate_reasons(self) -> dict[str, int]:
        """The same per topic, as refusal reasons (what `ddnn monitor` lists); a warning
        per topic whose drops grew since the last status, not one per message."""
        if self.rates is None or not self.rates.dropped:
            return {}
        out = {}
        for topic, n in self.rates.dropped.most_common(RATE_REASONS):
            name = topic.removeprefix(self.topics.root + "/")[:60]  # any topic, on open brokers
            out[f"over its account's rate ({name})"] = n
            if n > self._rate_warned[topic]:
                self.log.warning(
                    "%s over its rate (%g/s, bursts of %g): %d messages dropped so far",
                    name,
                    self.rates.rate,
                    self.rates.burst,
                    n,
                )
                self._rate_warned[topic] = n
        return out

    def receive(self, topic: str, payload: bytes) -> None:
        """One message off the transport: decode, check it belongs on its topic, handle it,
        under `guard` (of the message's sample, if it names one)."""
        self.counters["received"] += 1
        message: Message | None = None
        with self.guard():
            decoded = decode(payload)
            self.topics.check(topic, decoded)
            message = decoded
        if message is not None:
            # (no getattr: a pydantic model answers a missing attribute slowly, by raising)
            with self.guard(None if isinstance(message, Status) else message.sample):
                self.handle(topic, message)

    @contextmanager
    def guard(self, sample: int | None = None) -> Iterator[None]:
        """Run one step of an entry point (a message, a deadline, a stop) so that nothing
        it raises stops the service: a refusal is counted under its reason; any other error
        (a bug, or input no check foresaw) under `INTERNAL_ERROR`, logged with its trace,
        and the affected `sample` is ended by `abandon`."""
        try:
            yield
        except Refused as e:
            self.reject(e.reason, e.detail)
        except Exception as e:  # noqa: BLE001 - one message must never stop a service
            self.reject(INTERNAL_ERROR, f"{type(e).__name__}: {e}")
            if self.rejected[INTERNAL_ERROR] <= LOUD_REPEATS:
                self.log.exception("failed on %s", "a step" if sample is None else sample)
            if sample is not None:
                try:
                    self.abandon(sample)
                except Exception:  # noqa: BLE001 - already counted; the loop goes on
                    self.log.exception("failed to end sample %s after an error", sample)

    def abandon(self, sample: int) -> None:
        """End `sample` after an error while handling it (the aggregator decides it
        undecided, saying so); services that hold no sample to the end do nothing."""

    def _loop(self) -> None:
        wake: float | None = None
        announced = time.monotonic()
        while not self.stopping.is_set():
            # Announce on every reconnect, since a restarted broker has lost the retained
            # status, and every few seconds, so that operators see the counters move.
            now = time.monotonic()
            if self.client.connections != self._connections or now - announced > STATUS_EVERY:
                self._connections, announced = self.client.connections, now
                self.announce("online")
            timeout = 0.5 if wake is None else min(0.5, max(0.0, wake - time.monotonic()))
            item = self.client.get(timeout=timeout)
            if item is not None:
                self.receive(*item)
            wake = None
            with self.guard():
                wake = self.poll(time.monotonic())

    def stop(self) -> None:
        self.stopping.set()

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.counters.items())]
        if self.rejected:
            parts.append(f"rejected={sum(self.rejected.values())}")
        return " ".join(parts) or "no messages"

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
