"""Real brokers and clients for the MQTT tests (test_mqtt*.py): each kind of broker on a
free 127.0.0.1 port, connected and subscribed clients closed after each test, bounded waits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from ddnn.live.broker.running import RunningBroker
from ddnn.live.broker.start import find_mosquitto, start_broker
from ddnn.live.mqtt.client import MqttClient

KINDS = [
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(find_mosquitto() is None, reason="no mosquitto binary"),
    ),
    "rumqttd",
    "amqtt",
]


@pytest.fixture(scope="module", params=KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    with start_broker(kind=request.param) as running:
        yield running


def unique(prefix: str) -> str:
    return f"test/{prefix}/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clients() -> Iterator[list[MqttClient]]:
    made: list[MqttClient] = []
    yield made
    for client in made:
        client.close()


def connected(broker: RunningBroker, made: list[MqttClient], name: str, **kw) -> MqttClient:
    client = MqttClient(broker.settings(), f"{name}-{uuid.uuid4().hex[:8]}", **kw)
    made.append(client)
    return client.connect(timeout=5)


def subscriber(
    broker: RunningBroker, made: list[MqttClient], name: str, topic_filter: str, qos: int = 1
) -> MqttClient:
    """A connected client subscribed to `topic_filter`."""
    client = connected(broker, made, name)
    client.subscribe(topic_filter, qos=qos)
    return client


def wait_for(client: MqttClient, topic: str, payload: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        got = client.get(timeout=left)
        if got == (topic, payload):
            return True
    return False
