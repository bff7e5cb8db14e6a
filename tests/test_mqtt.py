"""The MQTT plumbing against real brokers: mosquitto (when installed) and the embedded one.

No mocks: each kind of broker is started on a free 127.0.0.1 port, and clients, killed client
processes and the `ddnn broker` command talk to it. Every wait is bounded. Flow control and
sessions across a restart: test_mqtt_sessions.py; URLs and connection errors:
test_mqtt_settings.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest

from ddnn.core.errors import DDNNError
from ddnn.live.broker.ceiling import broker_ceiling
from ddnn.live.broker.running import RunningBroker
from ddnn.live.broker.start import find_mosquitto, free_port, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.transport import Will
from ddnn.live.wire import MAX_PACKET, MAX_PAYLOAD
from tests.brokers import broker as broker  # fixtures, this and the next: pytest finds them here
from tests.brokers import clients as clients
from tests.brokers import connected, subscriber, unique, wait_for


@contextlib.contextmanager
def reaped(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """`process`, killed and waited for on the way out if it is still running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_kinds_and_protocols(broker: RunningBroker) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert broker.protocol == ("5" if broker.kind == "mosquitto" else "3.1.1")
    assert broker.running


def test_publish_subscribe_roundtrip(broker: RunningBroker, clients: list[MqttClient]) -> None:
    topic = unique("roundtrip")
    sub = subscriber(broker, clients, "sub", f"{topic}/#")
    pub = connected(broker, clients, "pub")
    # the subscription is in place once a message published after it comes back
    deadline = time.monotonic() + 5
    while not wait_for(sub, f"{topic}/probe", b"p", 0.2):
        pub.publish(f"{topic}/probe", b"p")
        assert time.monotonic() < deadline, "subscription never took effect"
    while sub.get(0.1) is not None:
        pass
    payloads = [bytes([i]) * 100 for i in range(20)]
    for i, p in enumerate(payloads):
        assert pub.publish(f"{topic}/{i}", p, qos=i % 2)
    got = [sub.get(timeout=5) for _ in payloads]
    assert sorted(got) == sorted((f"{topic}/{i}", p) for i, p in enumerate(payloads))
    assert sub.get(timeout=0) is None


def test_retained_status_reaches_late_subscriber(
    broker: RunningBroker, clients: list[MqttClient]
) -> None:
    topic = unique("status")
    pub = connected(broker, clients, "pub")
    assert pub.publish(topic, b"online", qos=1, retain=True)
    time.sleep(0.2)  # let the broker store it before anyone subscribes
    late = subscriber(broker, clients, "late", topic)
    assert wait_for(late, topic, b"online", 5)


def test_no_retained_messages_of_other_subscriptions(
    broker: RunningBroker, clients: list[MqttClient]
) -> None:
    """amqtt 0.12.1 sends a connecting client the retained messages of every filter anyone
    subscribes to; the embedded broker must not, and the client would drop them anyway."""
    theirs, mine = unique("theirs"), unique("mine")
    other = subscriber(broker, clients, "other", theirs)
    pub = connected(broker, clients, "pub")
    pub.publish(theirs, b"not for you", qos=1, retain=True)
    assert wait_for(other, theirs, b"not for you", 5)
    newcomer = subscriber(broker, clients, "newcomer", mine)
    assert newcomer.get(timeout=1.0) is None
    assert newcomer.unsolicited == 0


def test_subscriptions_made_before_connecting_are_kept(
    broker: RunningBroker, clients: list[MqttClient]
) -> None:
    topic = unique("early")
    pub = connected(broker, clients, "pub")
    pub.publish(topic, b"kept", qos=1, retain=True)
    early = MqttClient(broker.settings(), f"early-{uuid.uuid4().hex[:8]}")
    clients.append(early)
    early.subscribe(topic)  # not connected yet: made on connect
    early.connect(timeout=5)
    assert wait_for(early, topic, b"kept", 5)


DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from ddnn.live.mqtt.settings import BrokerSettings
    from ddnn.live.mqtt.client import MqttClient
    from ddnn.live.transport import Will
    url, protocol, topic, how = sys.argv[1:5]
    settings = BrokerSettings(url=url, protocol=protocol, keepalive=1)
    client = MqttClient(settings, "device-" + topic.rsplit("/", 1)[-1], will=Will(topic, b"dead"))
    client.connect(timeout=5)
    client.publish(topic, b"online", qos=1, retain=True)
    print("ready", flush=True)
    if how == "close":
        client.publish(topic, b"offline", qos=1, retain=True)
        client.close()
    else:
        time.sleep(60)
    """
)


def run_device(broker: RunningBroker, topic: str, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DEVICE_SCRIPT, broker.url, broker.protocol, topic, how],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_last_will_fires_when_a_client_process_is_killed(
    broker: RunningBroker, clients: list[MqttClient]
) -> None:
    topic = unique("will")
    watcher = subscriber(broker, clients, "watcher", topic)
    with reaped(run_device(broker, topic, "sleep")) as device:
        assert wait_for(watcher, topic, b"online", 10), "the device never came online"
        device.send_signal(signal.SIGKILL)
        device.wait(5)
        start = time.monotonic()
        assert wait_for(watcher, topic, b"dead", 10), "no last will within 10 s"
        assert time.monotonic() - start < 10
    # the will was retained: a late subscriber learns the device is dead
    late = subscriber(broker, clients, "late", topic)
    assert wait_for(late, topic, b"dead", 5)


def test_clean_close_does_not_fire_the_will(
    broker: RunningBroker, clients: list[MqttClient]
) -> None:
    topic = unique("clean")
    watcher = subscriber(broker, clients, "watcher", topic)
    with reaped(run_device(broker, topic, "close")) as device:
        assert device.wait(15) == 0
    assert wait_for(watcher, topic, b"online", 5)
    assert wait_for(watcher, topic, b"offline", 5)
    # keepalive 1 s: a will would have come within 1.5 s of the connection closing
    deadline = time.monotonic() + 2.5
    while (left := deadline - time.monotonic()) > 0:
        got = watcher.get(timeout=left)
        assert got != (topic, b"dead"), "a clean close fired the last will"


def test_in_process_close_is_clean_and_idempotent(
    broker: RunningBroker, clients: list[MqttClient]
) -> None:
    topic = unique("inproc")
    watcher = subscriber(broker, clients, "watcher", topic)
    time.sleep(0.2)
    client = connected(broker, clients, "dev", will=Will(topic, b"dead"))
    assert client.connected
    client.close()
    client.close()
    assert not client.connected
    assert watcher.get(timeout=1.0) is None


def test_broker_ceiling(broker: RunningBroker) -> None:
    result = broker_ceiling(broker.settings(), messages=500, timeout=20)
    assert result["received"] == result["messages"] == 500
    assert 0 < result["seconds"] < 20  # timed, and done before the timeout
    assert result["messages_per_second"] == pytest.approx(500 / result["seconds"], rel=0.01)


def test_broker_command_serves_until_sigterm(broker: RunningBroker) -> None:
    """`ddnn broker` (the same kind as the fixture's) accepts clients and exits 0 on SIGTERM."""
    port = free_port()
    command = [sys.executable, "-m", "ddnn", "broker", "--anonymous", "--port", str(port)]
    command += ["--kind", broker.kind]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    with reaped(process):
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "ddnn broker did not come up"
                time.sleep(0.1)
        settings = BrokerSettings(url=f"mqtt://127.0.0.1:{port}", protocol=broker.protocol)
        client = MqttClient(settings, "cli-check").connect(timeout=5)
        client.close()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=5)
    assert process.returncode == 0, stderr
    assert f"mqtt://127.0.0.1:{port}" in stdout
    assert broker.kind in stdout


def test_bench_broker_command(broker: RunningBroker) -> None:
    command = [sys.executable, "-m", "ddnn", "bench", "broker", "--kind", broker.kind]
    done = subprocess.run(
        [*command, "--messages", "300", "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == broker.kind
    assert result["received"] == result["messages"] == 300
    # The figure is the rate of what was timed, not a constant.
    rate = result["received"] / result["seconds"]
    assert result["messages_per_second"] == pytest.approx(rate, rel=0.01)


def test_port_in_use_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DDNNError, match="in use"):
            start_broker(port=port, kind="rumqttd")


def test_port_zero_means_any_free_port_and_the_url_says_which() -> None:
    with start_broker(port=0, kind="rumqttd") as broker:
        assert broker.port > 0 and broker.url.endswith(f":{broker.port}")
        MqttClient(broker.settings(), "port-zero").connect(timeout=5).close()


def test_unknown_broker_kind() -> None:
    with pytest.raises(DDNNError, match="broker kind"):
        start_broker(kind="rabbit")


@pytest.mark.parametrize("kind", ["mosquitto", "rumqttd", "amqtt"])
def test_the_broker_refuses_packets_over_the_limit(clients: list[MqttClient], kind: str) -> None:
    """No DDNN message comes near MAX_PAYLOAD. A client that sends a bigger packet anyway
    (paho itself, not our client, which refuses to) is cut off by the broker, and no
    subscriber gets it; the largest message the wire takes still goes through (rumqttd:
    bigger than a segment of its log; amqtt: bounded by ddnn/live/broker/embedded.py)."""
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    with start_broker(kind=kind) as broker:
        topic = unique("big")
        sub = subscriber(broker, clients, "sub", topic)
        pub = connected(broker, clients, "pub")
        while not wait_for(sub, topic, b"p", 0.2):
            pub.publish(topic, b"p")
        while sub.get(0.1) is not None:
            pass
        largest = b"L" * MAX_PAYLOAD
        assert pub.publish(topic, largest, qos=1)
        assert wait_for(sub, topic, largest, 5)
        big = b"x" * (MAX_PACKET + 1)
        assert not pub.publish(topic, big, qos=1)  # ours does not even try
        version = paho.MQTTv5 if broker.protocol == "5" else paho.MQTTv311
        rogue = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=version)
        cut_off = threading.Event()
        rogue.on_disconnect = lambda *_: cut_off.set()
        rogue.connect(broker.host, broker.port)
        rogue.loop_start()
        try:
            rogue.publish(topic, big, qos=0)
            assert sub.get(timeout=1.0) is None
            assert cut_off.wait(5), f"{kind} did not cut off the client of the big packet"
        finally:
            rogue.loop_stop()
        assert pub.publish(topic, b"small", qos=1)
        assert wait_for(sub, topic, b"small", 5)
