"""`broker_ceiling`: the raw rate a broker relays small messages from one client to another.

It is the ceiling under any service built on that broker, whatever the model costs: `ddnn
bench broker` measures it, and `ddnn demo` reports it beside the live figures.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ddnn.core.errors import DDNNError
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings, as_settings


def broker_ceiling(
    settings_or_url: BrokerSettings | str,
    messages: int = 2000,
    payload_bytes: int = 64,
    timeout: float = 30.0,
    topic: str | None = None,
) -> dict[str, Any]:
    """Relay `messages` QoS 0 messages of `payload_bytes` from one paho client through the
    broker to another and time it, from the first publish to the last receipt.

    `topic`: where (default: a new one under `ddnn/bench/`), for a broker whose accounts may
    publish only on their own topics. Bounded: after `timeout` seconds it reports what was
    received by then. The publisher waits whenever it is more than a few hundred messages
    ahead of the subscriber, so that neither the broker nor the client drops QoS 0 messages
    it cannot keep up with; the figure is the rate the pair sustains, not a burst.
    """
    if messages < 1:
        raise DDNNError(f"messages must be at least 1, got {messages}")
    settings = as_settings(settings_or_url)
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    topic = topic or f"ddnn/bench/{stamp}"
    payload = bytes(payload_bytes)
    subscriber = MqttClient(settings, f"ddnn-bench-sub-{stamp}")
    publisher = MqttClient(settings, f"ddnn-bench-pub-{stamp}")
    try:
        subscriber.connect()
        publisher.connect()
        received = 0
        subscriber.subscribe(topic, qos=0)
        # The subscription is in place once a probe published after it comes back.
        deadline = time.monotonic() + 5.0
        while True:
            publisher.publish(topic, b"probe")
            if subscriber.get(0.2) is not None:
                break
            if time.monotonic() > deadline:
                raise DDNNError(f"no message came back through the broker at {settings.url}")
        while subscriber.get(0.2) is not None:
            pass  # drain extra probes
        window = 500
        sent = 0
        start = time.perf_counter()
        end = start + timeout
        last = start
        while received < messages:
            now = time.perf_counter()
            if now > end:
                break
            while sent < messages and sent - received < window:
                if publisher.publish(topic, payload):
                    sent += 1
                else:
                    break
            got = subscriber.get(min(0.1, max(0.0, end - now)))
            if got is not None:
                received += 1
                while received < messages and subscriber.get(0) is not None:
                    received += 1
                last = time.perf_counter()
        seconds = max(last - start, 1e-9)
    finally:
        publisher.close()
        subscriber.close()
    return {
        "broker": settings.url,
        "messages": messages,
        "payload_bytes": payload_bytes,
        "received": received,
        "seconds": round(seconds, 4),
        "messages_per_second": round(received / seconds, 1) if received else 0.0,
    }
