"""Broker settings and connection errors: URLs parsed or refused naming them, loopback
addresses, clear-text passwords to other machines, a closed port and a wrong protocol."""

from __future__ import annotations

import logging
import time

import pytest
from pydantic import ValidationError

from ddnn.core.errors import ConfigError, DDNNError
from ddnn.live.broker.ceiling import broker_ceiling
from ddnn.live.broker.start import free_port, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings, is_loopback, parse_broker_url


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1883", "mqtt://", "127.0.0.1:1883", "mqtt://host:notaport"]
)
def test_bad_url_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"broker URL '.*'") as raised:
        BrokerSettings.from_url(url)
    assert url in str(raised.value)
    with pytest.raises(ConfigError, match="broker URL"):
        MqttClient(url, "x")
    with pytest.raises(ConfigError, match="broker URL"):
        broker_ceiling(url)
    with pytest.raises(ValidationError, match="broker URL"):
        BrokerSettings(url=url)


def test_url_parsing() -> None:
    assert parse_broker_url("mqtt://example.org") == ("example.org", 1883, False)
    assert parse_broker_url("mqtts://example.org") == ("example.org", 8883, True)
    assert parse_broker_url("MQTT://10.0.0.2:1999/") == ("10.0.0.2", 1999, False)
    settings = BrokerSettings(url="mqtts://b:9000")
    assert (settings.host, settings.port, settings.tls) == ("b", 9000, True)
    with pytest.raises(ConfigError, match="use mqtts://"):
        MqttClient(BrokerSettings(url="mqtt://b", tls_insecure=True), "x")


def test_closed_port_fails_naming_the_url() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    client = MqttClient(url, "nobody-home")
    start = time.monotonic()
    with pytest.raises(DDNNError, match="cannot connect") as raised:
        client.connect(timeout=1.0)
    assert url in str(raised.value)
    assert time.monotonic() - start < 5
    assert not client.connected


@pytest.mark.parametrize("kind", ["rumqttd", "amqtt"])
def test_wrong_protocol_is_explained(kind: str) -> None:
    """An MQTT 5 client at a 3.1.1-only broker: amqtt never answers its CONNECT (it has
    properties: Receive Maximum, Session Expiry), rumqttd hangs up, and either way the
    error says what to change."""
    with start_broker(kind=kind) as embedded:
        client = MqttClient(embedded.url, "speaks-5")
        with pytest.raises(DDNNError, match="set (protocol )?3.1.1") as raised:
            client.connect(timeout=1.5)
        assert embedded.url in str(raised.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.4.5", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("10.0.0.7", False), ("broker.example", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_password_in_clear_text_to_another_machine_is_warned(caplog) -> None:
    remote = BrokerSettings(url="mqtt://10.0.0.7:1883", username="u", password="secret")
    with caplog.at_level(logging.WARNING, logger="ddnn.live.mqtt.client"):
        MqttClient(remote, "warned")  # no connection is made before start()
        MqttClient(BrokerSettings(url="mqtt://127.0.0.1:1883", password="p"), "local")
    assert [r.getMessage() for r in caplog.records] == [
        "the password for mqtt://10.0.0.7:1883 travels in clear text over mqtt:// to another "
        "machine: use mqtts://"
    ]
