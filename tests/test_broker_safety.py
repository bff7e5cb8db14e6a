"""A broker's exposure (issue 27): packet size bounds both ways, the user mosquitto runs as
when started as root, plain-MQTT listeners other machines can reach, and bridges that would
send their password in clear text. Real brokers, each in a process of its own on a free
port of 127.0.0.1.

(The embedded amqtt broker cutting off a client over the packet limit is tested beside
mosquitto and rumqttd: tests/test_mqtt.py, test_the_broker_refuses_packets_over_the_limit.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trustme

from ddnn.core.config import ModelConfig
from ddnn.core.errors import DDNNError
from ddnn.live.access import OBSERVER, write_access
from ddnn.live.broker.embedded import PacketGate
from ddnn.live.broker.mosquitto import STATE_FILE, Bridge, broker_user
from ddnn.live.broker.running import TlsFiles
from ddnn.live.broker.start import find_mosquitto, free_port, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.rates import TopicRates
from ddnn.live.wire import MAX_PACKET, MAX_PAYLOAD
from tests.helpers import ddnn

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="no mosquitto binary")


def header(length: int, kind: int = 0x30) -> bytes:
    """An MQTT fixed header (a PUBLISH by default) announcing `length` more bytes."""
    out = bytearray([kind])
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


class Transport:
    """What a gate needs of a StreamWriter: the transport it aborts."""

    def __init__(self) -> None:
        self.aborted = False
        self.transport = self

    def abort(self) -> None:
        self.aborted = True


def gate_reads(stream: bytes, piece: int, rates: TopicRates | None = None) -> tuple[bytes, Any]:
    """What a PacketGate over `stream` (then EOF) hands amqtt when read `piece` bytes at a
    time (none past the stream's end: amqtt reads within packets), and the gate; reading
    stops at the first failure, as amqtt's does."""

    async def run() -> tuple[bytes, PacketGate]:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        gate = PacketGate(reader, Transport(), MAX_PACKET, rates)  # type: ignore[arg-type]
        out = bytearray()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
            while len(out) < len(stream):
                out += await gate.read(min(piece, len(stream) - len(out)))
        return bytes(out), gate

    return asyncio.run(run())


def publish(topic: str, payload: bytes, qos: int = 0) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet (packet id 1 at QoS 1)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + (b"\0\1" if qos else b"") + payload
    return header(len(body), 0x30 | qos << 1) + body


@pytest.mark.parametrize("piece", [1, 3, 4096])
def test_the_packet_gate_hands_amqtt_every_packet_in_any_pieces_and_cuts_off_a_bigger_one(
    piece: int,
) -> None:
    """amqtt reads a client through the gate: packets up to the limit (an empty PINGREQ, a
    full one) come out as sent, whatever pieces amqtt asks for; a bigger one aborts the
    connection at its header, before its body (which never comes here) is awaited."""
    fits = MAX_PACKET - len(header(MAX_PACKET))
    stream = header(0, 0xC0) + header(fits) + b"x" * fits + publish("a/b", b"hello")
    got, gate = gate_reads(stream, piece)
    assert got == stream and not gate._writer.aborted
    got, gate = gate_reads(publish("a/b", b"first") + header(fits + 1), 1)
    assert got == publish("a/b", b"first") and gate._writer.aborted


def test_the_packet_gate_drops_qos_0_messages_over_their_topics_rate() -> None:
    """Each topic has its own bucket (3 at once here, the clock standing still): a topic's
    QoS 0 messages past it are dropped and counted, another topic's and every QoS 1 message
    (the sender waits for its acknowledgement) and other packet go on."""
    rates = TopicRates(rate=10.0, burst=3.0, clock=lambda: 100.0)
    flood = [publish("scores/device-0", bytes([n])) for n in range(6)]
    other = [publish("scores/device-1", bytes([n])) for n in range(3)]
    acked = [publish("scores/device-0", b"q1", qos=1)]
    stream = b"".join(flood + other + acked) + header(0, 0xC0)
    got, gate = gate_reads(stream, 1, rates)
    assert got == b"".join(flood[:3] + other + acked) + header(0, 0xC0)
    assert gate.dropped == 3


@contextlib.contextmanager
def bare_mosquitto(folder: Path) -> Iterator[int]:
    """mosquitto with no packet limit of its own (anonymous, 127.0.0.1): its port."""
    port = free_port()
    config = folder / "bare.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen(
        [find_mosquitto(), "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                paho.socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            assert process.poll() is None and time.monotonic() < deadline, "no mosquitto"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)


@needs_mosquitto
def test_a_client_is_sent_nothing_bigger_than_the_wire_takes(tmp_path: Path) -> None:
    """Our MQTT 5 client tells the broker the biggest packet it takes (MAX_PACKET): a broker
    that took a bigger message from someone else drops it for this client instead of
    sending it, and the client stays connected for what comes next."""
    with bare_mosquitto(tmp_path) as port:
        url = f"mqtt://127.0.0.1:{port}"
        topic = f"test/big/{uuid.uuid4().hex[:8]}"
        sub = MqttClient(url, "sub")
        sub.subscribe(topic, qos=1)  # acknowledged once connected: before the first publish
        sub.connect(timeout=5)
        try:
            sender = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            sender.connect("127.0.0.1", port)
            sender.loop_start()
            try:
                for payload in (b"L" * MAX_PAYLOAD, b"x" * MAX_PACKET, b"after"):
                    sender.publish(topic, payload, qos=1).wait_for_publish(10)
                got = [sub.get(timeout=5) for _ in range(2)]
            finally:
                sender.loop_stop()
            assert got == [(topic, b"L" * MAX_PAYLOAD), (topic, b"after")]
            assert sub.get(timeout=0.3) is None
            assert sub.connections == 1
        finally:
            sub.close()


def process_uid(pid: int) -> int:
    """The real user id of process `pid`, as /proc says."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


@needs_mosquitto
@pytest.mark.skipif(os.geteuid() != 0, reason="only root has privileges to drop")
def test_mosquitto_started_as_root_runs_as_an_unprivileged_user(tmp_path: Path) -> None:
    """Started as root, mosquitto runs as the mosquitto user (or nobody), yet reads the
    access files and TLS key and keeps its state, all in folders only root may enter."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    access = write_access(closed / "export", ModelConfig(), "default", "v1")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(closed / "server.pem"))
    cert.private_key_pem.write_to_path(str(closed / "server.key"))
    os.chmod(closed / "server.key", 0o600)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = TlsFiles(closed / "server.pem", closed / "server.key")
    state = closed / "state"
    expected = broker_user()
    assert expected is not None and expected.pw_uid != 0
    topic = "ddnn/default/v1/status/device-0"  # the device's to write, the observer's to read
    trust = {"tls_ca": tmp_path / "ca.pem"}
    for round_ in ("first", "restarted"):
        with start_broker(kind="mosquitto", access=access, tls=tls, state=state) as broker:
            assert process_uid(broker.pid) == expected.pw_uid
            if round_ == "first":
                device = MqttClient(broker.settings("device-0").model_copy(update=trust), "d")
                device.connect(timeout=10)
                assert device.publish(topic, b"kept", qos=1, retain=True)
                assert device.wait_published(5) and device.denied == 0
                device.close()
            settings = broker.settings(OBSERVER).model_copy(update=trust)
            observer = MqttClient(settings, f"observer-{round_}").connect(timeout=10)
            try:
                observer.subscribe(topic)
                assert observer.get(timeout=5) == (topic, b"kept")
            finally:
                observer.close()
        assert (state / STATE_FILE).is_file()
        assert pwd.getpwuid((state / STATE_FILE).stat().st_uid).pw_name == expected.pw_name


def test_a_plain_listener_other_machines_reach_is_refused(tmp_path: Path) -> None:
    """Listening without TLS on an address other machines can reach is refused, in one
    line naming the address and the way out, by `start_broker` and `ddnn broker` alike."""
    with pytest.raises(DDNNError, match="refusing to listen on 0.0.0.0 over plain MQTT"):
        start_broker(host="0.0.0.0", kind="rumqttd").stop()  # stopped if it ever starts
    write_access(tmp_path, ModelConfig(), "default", "v1")
    refused = ddnn("broker", "--artifacts", str(tmp_path), "--host", "0.0.0.0", check=False)
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0 over plain MQTT" in refused.stderr
    assert "--insecure-plaintext" in refused.stderr
    assert "Traceback" not in refused.stderr


@needs_mosquitto
def test_a_bridge_that_sends_its_password_in_clear_text_is_warned(caplog) -> None:
    """A bridge logging in over plain mqtt:// to another machine gives its password away to
    anyone on the way: the broker still starts, and a warning names the remote. Over TLS,
    nothing is said."""
    remote = BrokerSettings(url="mqtt://192.0.2.7:1883", username="bridge", password="pw")
    bridge = Bridge(remote, ("ddnn/out/#",), ("ddnn/in/#",))
    with (
        caplog.at_level(logging.WARNING, logger="ddnn.live.broker.mosquitto"),
        start_broker(kind="mosquitto", bridge=bridge) as broker,
    ):
        assert broker.running
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mqtt://192.0.2.7:1883" in warnings[0]
    assert "clear text" in warnings[0]
    caplog.clear()
    secure = remote.model_copy(update={"url": "mqtts://192.0.2.7:8883", "tls_ca": Path("ca")})
    with caplog.at_level(logging.WARNING, logger="ddnn.live.broker.mosquitto"):
        Bridge(secure, ("ddnn/out/#",), ()).config("b")
    assert not caplog.records


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has privileges to drop")
@pytest.mark.parametrize("engine", ["rumqttd", "amqtt"])
def test_an_embedded_broker_started_as_root_runs_as_an_unprivileged_user(
    engine: str, tmp_path: Path
) -> None:
    """Started as root, an embedded broker runs as the user mosquitto would, yet takes the
    accounts (and, amqtt, the grants) of access files in a folder only root may enter, and
    carries messages: all it reads, it read before dropping (the interpreter here lies
    under /root, which that user cannot enter either)."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    access = write_access(closed / "export", ModelConfig(), "default", "v1")
    expected = broker_user()
    assert expected is not None and expected.pw_uid != 0
    topic = "ddnn/default/v1/status/device-0"  # the device's to write, the observer's to read
    with start_broker(kind=engine, access=access, grants=engine == "amqtt") as broker:
        assert process_uid(broker.pid) == expected.pw_uid
        observer = MqttClient(broker.settings(OBSERVER), "observer")
        observer.subscribe("ddnn/default/v1/status/+")  # acknowledged once connected
        observer.connect(timeout=10)
        device = MqttClient(broker.settings("device-0"), "device").connect(timeout=10)
        try:
            if broker.enforces_grants:  # the device may not write another device's status
                assert device.publish("ddnn/default/v1/status/device-1", b"forged", qos=1)
            assert device.publish(topic, b"sent", qos=1)
            assert observer.get(timeout=5) == (topic, b"sent")  # the forgery came first, if at all
            assert broker.running
        finally:
            device.close()
            observer.close()


def test_amqtt_delivers_every_message_while_other_clients_subscribe(tmp_path: Path) -> None:
    """amqtt 0.12 lost a message for the subscribers it had not yet served whenever a client
    subscribed while it was handing the message out ("dictionary changed size during
    iteration", embedded_broker.SnapshotDict): with clients coming and subscribing all the
    while (as services restarted by a kill storm do), a subscriber behind another one still
    gets every message. Unfixed, one in about a thousand was lost, in half the runs."""
    access = write_access(tmp_path, ModelConfig(), "default", "v1")
    topic, sent = "ddnn/default/v1/status/device-0", 900  # under the inbox's bound
    with start_broker(kind="amqtt", access=access) as broker:
        clients = []
        for name, topic_filter in (("first", "ddnn/default/v1/#"), ("second", topic)):
            client = MqttClient(broker.settings(OBSERVER), name)
            client.subscribe(topic_filter)  # acknowledged once connected
            clients.append(client.connect(timeout=10))
        stop = threading.Event()

        def subscribe_again_and_again() -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                client = MqttClient(broker.settings(OBSERVER), f"churn-{n}")
                for topic_filter in ("ddnn/default/v1/+/+", "ddnn/default/v1/status/#"):
                    client.subscribe(topic_filter)
                client.connect(timeout=10)
                client.close()

        churn = threading.Thread(target=subscribe_again_and_again)
        churn.start()
        device = MqttClient(broker.settings("device-0"), "device").connect(timeout=10)
        try:
            for n in range(sent):
                assert device.publish(topic, str(n).encode(), qos=1)
            assert device.wait_published(30)
        finally:
            stop.set()
            churn.join()
        received: list[set[bytes]] = [set(), set()]
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:  # both read at once: neither holds up amqtt
            for client, payloads in zip(clients, received, strict=True):
                if (message := client.get(timeout=0.01)) is not None:
                    payloads.add(message[1])
                    quiet_since = time.monotonic()
        for client in (*clients, device):
            client.close()
            assert client.dropped == 0
    assert [len(payloads) for payloads in received] == [sent, sent]


def test_amqtt_hands_out_what_it_acknowledged_after_its_sender_is_gone(tmp_path: Path) -> None:
    """amqtt 0.12 acknowledges a QoS 1 message when it reads it and dropped those it had not
    yet handed out once their sender disconnected (about half of a burst of 900): a service
    that publishes and exits, or is killed, loses nothing it was told the broker has."""
    access = write_access(tmp_path, ModelConfig(), "default", "v1")
    topic, sent = "ddnn/default/v1/status/device-0", 900  # under the inbox's bound
    with start_broker(kind="amqtt", access=access) as broker:
        observer = MqttClient(broker.settings(OBSERVER), "observer")
        observer.subscribe(topic)
        observer.connect(timeout=10)
        device = MqttClient(broker.settings("device-0"), "device").connect(timeout=10)
        for n in range(sent):
            assert device.publish(topic, str(n).encode(), qos=1)
        assert device.wait_published(30)
        device.close()
        received = set()
        while (message := observer.get(timeout=2)) is not None:
            received.add(message[1])
        observer.close()
    assert observer.dropped == 0 and len(received) == sent
