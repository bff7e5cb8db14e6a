"""The seam between a service and its broker: what a service needs of a connection.

Two implementations: `ddnn.live.mqtt.client.MqttClient` (a real broker, over TCP or TLS) and
`ddnn.live.memory.MemoryBus` (an in-process broker with the same topic, retain and last-will
semantics). Services only ever use this interface, so their handlers run unchanged against
either: the real broker in deployments and integration tests, the in-memory one in fast
tests of each service's state machine (and, later, in fuzzing).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

Received = tuple[str, bytes]  # (topic, payload) of one incoming message
T = TypeVar("T")


class Receipt(Protocol):
    """A message the transport took: `is_published()` turns True once the broker has it
    (its PUBACK, for QoS 1). paho's `MQTTMessageInfo` is one."""

    def is_published(self) -> bool: ...


class Delivered:
    """The receipt of a message delivered at once (the in-process bus)."""

    def is_published(self) -> bool:
        return True


DELIVERED = Delivered()


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for a client whose connection is lost uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Transport(Protocol):
    """One connection to a broker. `publish` never blocks and says False when the message was
    dropped; incoming messages wait for `get()`."""

    # Fairness: asked with a message's topic before it takes a place in the inbox; False
    # drops it (a token bucket per topic, ddnn/live/rates.py). None: all go in.
    admit: Callable[[str], bool] | None

    @property
    def url(self) -> str:
        """Where the broker is, for log lines."""
        ...

    @property
    def connections(self) -> int:
        """Successful (re)connects so far: a new one means the broker may have lost the
        retained statuses."""
        ...

    @property
    def denied(self) -> int:
        """Publishes the broker refused (MQTT 5 PUBACK reason codes: an account publishing
        outside its grants; a 3.1.1 broker drops them without a word)."""
        ...

    @property
    def dropped(self) -> int:
        """Incoming messages dropped because the inbox was full (a flood the broker's flow
        control did not hold back: QoS 0, or an MQTT 3.1.1 broker)."""
        ...

    def connect(self, timeout: float = 10.0) -> Transport:
        """Connect (retrying in the background after) and wait until connected; raise
        `DDNNError` naming the broker and the reason when that fails within `timeout`."""
        ...

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def send(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> Receipt | None:
        """Send or queue a message; its receipt, or None when it was dropped (QoS 0 while
        disconnected, QoS 1 past the queue's bound, too big). A QoS 1 message queued while
        disconnected goes out once on reconnect: a caller must not send it again."""
        ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """`send`, saying only whether the message was taken."""
        ...

    def get(self, timeout: float | None = None) -> Received | None:
        """The next incoming message, waiting up to `timeout` seconds; None when none came."""
        ...

    def wait_published(self, timeout: float) -> bool:
        """Wait until the broker has every QoS 1 message published so far; False when some
        were still unacknowledged after `timeout` seconds."""
        ...

    def close(self) -> None:
        """Disconnect cleanly (the will does not fire)."""
        ...


def take(inbox: queue.Queue[T], timeout: float | None) -> T | None:
    """The next message of a transport's inbox, waiting up to `timeout` seconds (forever if
    None, not at all if <= 0); None when nothing came."""
    try:
        if timeout is not None and timeout <= 0:
            return inbox.get_nowait()
        return inbox.get(timeout=timeout)
    except queue.Empty:
        return None


class UntilEcho:
    """What `transport` receives until a probe it publishes now on `probe` (a topic it
    subscribes to) comes back: the broker sends the probe after everything published before
    it, the retained messages of the subscriptions included, so this ends where "all there
    was" ends (waiting for quiet would not: statuses come every few seconds). `echoed` says
    whether the probe came back within `timeout` seconds."""

    def __init__(self, transport: Transport, probe: str, timeout: float) -> None:
        self.transport = transport
        self.probe = probe
        self.timeout = timeout
        self.echoed = False

    def __iter__(self) -> Iterator[Received]:
        self.transport.publish(self.probe, b"", qos=1)
        deadline = time.monotonic() + self.timeout
        while (item := self.transport.get(max(0.0, deadline - time.monotonic()))) is not None:
            if item[0] == self.probe:
                self.echoed = True
                return
            yield item
