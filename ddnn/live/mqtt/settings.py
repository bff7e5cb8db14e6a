"""Where an MQTT broker is and how to talk to it: `BrokerSettings`, and its URL's parts.

Every client of the live system (`MqttClient`, the services, the tools of ddnn/ops) takes
one `BrokerSettings`; a service reads it from its options or an account file
(ddnn/live/access.py). A URL is `mqtt://host[:port]` (plain TCP) or `mqtts://host[:port]`
(TLS); a bad one is refused here, with a `ConfigError` that names it, before any connection
is tried. The MQTT version (5 by default, or 3.1.1) is chosen per broker, explicitly.

Design: docs/design/brokers.md (the protocol version: why per broker, and who says which).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ddnn.core.errors import ConfigError, problems

Protocol = Literal["5", "3.1.1"]
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:port]` (plain TCP, port 1883 by default) or `mqtts://host[:port]` (TLS,
    8883). Anything else is a `ConfigError` that names the URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"broker URL {url!r} is not valid: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigError(
            f"broker URL {url!r} must start with mqtt:// or mqtts:// (got scheme {parts.scheme!r})"
        )
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host (expected {scheme}://HOST[:PORT])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r} must be {scheme}://HOST[:PORT], nothing after it")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"broker URL {url!r}: give credentials as username/password settings, not in the URL"
        )
    if port == 0:
        raise ConfigError(f"broker URL {url!r}: port 0 is not a port a broker listens on")
    return BrokerAddress(parts.hostname, port or DEFAULT_PORTS[scheme], scheme == "mqtts")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def cleartext_password(settings: BrokerSettings) -> str | None:
    """Why logging in with `settings` gives the password away, or None: plain mqtt:// to
    another machine, where anyone on the way reads it. A client and a bridge both say so."""
    if settings.password and not settings.tls and not is_loopback(settings.host):
        return (
            f"the password for {settings.url} travels in clear text over mqtt:// to another "
            "machine: use mqtts://"
        )
    return None


def format_broker_url(host: str, port: int, tls: bool = False) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{shown}:{port}"


class BrokerSettings(BaseModel):
    """Where the broker is and how to talk to it. TLS is on exactly when the URL is mqtts://;
    the tls_* files are then the CA bundle to trust (system CAs when unset) and an optional
    client certificate and key."""

    model_config = ConfigDict(extra="forbid")

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = Field(
        False, description="skip the server host name check (self-signed test brokers only)"
    )
    keepalive: int = Field(
        5, ge=1, le=65535, description="seconds; a lost client's will fires after 1.5x this"
    )
    protocol: Protocol = Field("5", description="MQTT version: 5, or 3.1.1 for brokers without 5")
    quick_ack: bool = Field(
        False,
        description="acknowledge what the broker sends at once: for a broker that leaves "
        "Nagle's algorithm on (rumqttd), whose second small packet in a row otherwise waits "
        "~40 ms for this client's delayed TCP acknowledgement",
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        try:
            parse_broker_url(url)
        except ConfigError as e:
            raise ValueError(str(e)) from None  # pydantic turns ValueError into its own error
        return url

    @classmethod
    def from_url(cls, url: str, **fields: object) -> BrokerSettings:
        """Settings for a URL; a bad URL, or a bad value of another field, is a one-line
        `ConfigError` naming it."""
        parse_broker_url(url)
        try:
            return cls(url=url, **fields)
        except ValidationError as e:
            got = e.errors()[0].get("input")
            raise ConfigError(f"broker setting {problems(e, 1)} (got {got!r})") from None

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def tls(self) -> bool:
        return self.address.tls


def as_settings(settings_or_url: BrokerSettings | str) -> BrokerSettings:
    if isinstance(settings_or_url, BrokerSettings):
        return settings_or_url
    return BrokerSettings.from_url(settings_or_url)
