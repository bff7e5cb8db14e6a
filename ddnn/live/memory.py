"""An in-process broker: the `Transport` of fast tests, with MQTT's semantics where services
depend on them.

What it keeps of MQTT: topic filters with `+` and `#`; retained messages (kept per topic, an
empty retained payload clears one, a new subscription receives the matching ones first);
last wills, published when a client is `lose`-d (the in-process way of killing a process) and
not on a clean `close()`; MQTT 5 shared subscriptions (`$share/<group>/<filter>`: each
message to one member of the group, in turn, and retained messages to none); and per-client
inboxes read with `get(timeout)`, as the MQTT client's. What it leaves out: QoS (nothing is
lost in-process), sessions and the network.

Delivery is synchronous: `publish` puts the message in every matching subscriber's inbox
before it returns, so a test that hands each service its inbox in turn (`settle`) runs a
deployment's whole exchange deterministically, without threads or sleeps.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable

from paho.mqtt.matcher import MQTTMatcher

from ddnn.core.errors import DDNNError
from ddnn.live.transport import DELIVERED, Receipt, Received, Will, take
from ddnn.live.wire import MAX_PAYLOAD


class MemoryBus:
    """The broker. `client()` opens a connection to it."""

    url = "memory://"

    def __init__(self) -> None:
        self._lock = threading.RLock()  # _attach detaches a taken-over client under it
        self._clients: dict[str, MemoryClient] = {}
        self._retained: dict[str, bytes] = {}
        self._ids = itertools.count()
        self._turns: dict[str, int] = {}  # shared subscription group -> messages handed out

    def client(self, client_id: str | None = None, *, will: Will | None = None) -> MemoryClient:
        return MemoryClient(self, client_id or f"memory-{next(self._ids)}", will)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if any(c in topic for c in "+#"):
            raise DDNNError(f"cannot publish to {topic!r}: wildcards are for subscriptions")
        with self._lock:
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            receivers = [c for c in self._clients.values() if c.wants(topic)]
            members: dict[str, list[MemoryClient]] = {}
            for c in self._clients.values():
                for group in c.shares(topic):
                    members.setdefault(group, []).append(c)
            for group, clients in members.items():
                turn = self._turns.get(group, 0)
                self._turns[group] = turn + 1
                receivers.append(clients[turn % len(clients)])
        for c in receivers:
            c.deliver(topic, payload)

    def lose(self, client: MemoryClient) -> None:
        """Drop `client`'s connection uncleanly, as a killed process or a dead network does:
        it receives nothing more and its will is published."""
        if client.detach():
            will = client.will
            if will is not None:
                self.publish(will.topic, will.payload, retain=will.retain)

    # -- for MemoryClient ----------------------------------------------------------------
    def _attach(self, client: MemoryClient) -> None:
        with self._lock:
            if client.client_id in self._clients:
                # MQTT's rule: a second connection with the same id takes over the first.
                self._clients.pop(client.client_id).detach()
            self._clients[client.client_id] = client

    def _detach(self, client: MemoryClient) -> None:
        with self._lock:
            if self._clients.get(client.client_id) is client:
                del self._clients[client.client_id]

    def _retained_for(self, topic_filter: str) -> list[Received]:
        matcher = MQTTMatcher()
        matcher[topic_filter] = True
        with self._lock:
            return [
                (topic, payload)
                for topic, payload in self._retained.items()
                if next(matcher.iter_match(topic), None) is not None
            ]


class MemoryClient:
    """One connection to a `MemoryBus`; implements `ddnn.live.transport.Transport`."""

    def __init__(self, bus: MemoryBus, client_id: str, will: Will | None) -> None:
        self.bus = bus
        self.client_id = client_id
        self.will = will
        self.connections = 0
        self.denied = 0  # this bus grants everything: see ddnn/live/access.py for brokers
        self.dropped = 0  # its inboxes are unbounded: tests hand them their floods whole
        self.admit: Callable[[str], bool] | None = None  # Transport.admit: none unless set
        self._filters = MQTTMatcher()
        self._shared: dict[str, MQTTMatcher] = {}  # group -> its filters
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._attached = False

    @property
    def url(self) -> str:
        return self.bus.url

    def connect(self, timeout: float = 10.0) -> MemoryClient:
        if not self._attached:
            self.bus._attach(self)
            self._attached = True
            self.connections += 1
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        if topic_filter.startswith("$share/"):
            _, group, shared = topic_filter.split("/", 2)
            self._shared.setdefault(group, MQTTMatcher())[shared] = True
            return
        self._filters[topic_filter] = True
        for topic, payload in self.bus._retained_for(topic_filter):
            self._inbox.put((topic, payload))

    def send(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> Receipt | None:
        if not self._attached or len(payload) > MAX_PAYLOAD:
            return None  # as the MQTT client drops it past its queue, or too big
        self.bus.publish(topic, payload, retain=retain)
        return DELIVERED

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        return self.send(topic, payload, qos, retain) is not None

    def get(self, timeout: float | None = None) -> Received | None:
        return take(self._inbox, timeout)

    def wait_published(self, timeout: float) -> bool:
        return True  # delivered as published

    def close(self) -> None:
        self.detach()

    # -- for MemoryBus -------------------------------------------------------------------
    def wants(self, topic: str) -> bool:
        return next(self._filters.iter_match(topic), None) is not None

    def shares(self, topic: str) -> list[str]:
        """The shared subscription groups through which this client takes `topic`."""
        return [
            group
            for group, filters in self._shared.items()
            if next(filters.iter_match(topic), None) is not None
        ]

    def deliver(self, topic: str, payload: bytes) -> None:
        if self._attached and (self.admit is None or self.admit(topic)):
            self._inbox.put((topic, payload))

    def detach(self) -> bool:
        """Leave the bus; False when already gone."""
        if not self._attached:
            return False
        self._attached = False
        self.bus._detach(self)
        return True
