"""Command-line options every service shares, and how a service process is started.

The service commands (`ddnn device`, `aggregator`, `edge`, `cloud`) live in their own
packages and reach the `ddnn` command through the `ddnn.services` entry points, so that this
library depends on none of them. Heavy imports (PyTorch, the model) happen inside the
command bodies: `ddnn --help` stays instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ddnn.mqtt import BrokerSettings

Artifacts = Annotated[
    Path, typer.Option("--artifacts", help="a directory written by `ddnn export`")
]
Broker = Annotated[
    str, typer.Option("--broker", help="mqtt://host:port, or mqtts://host:port for TLS")
]
MqttVersion = Annotated[
    str, typer.Option("--mqtt", help="MQTT version the broker speaks: 5 or 3.1.1")
]
Username = Annotated[str | None, typer.Option(help="broker user name")]
Password = Annotated[str | None, typer.Option(envvar="DDNN_MQTT_PASSWORD", help="broker password")]
TlsCa = Annotated[Path | None, typer.Option(help="CA bundle to trust (mqtts://)")]
TlsCert = Annotated[Path | None, typer.Option(help="client certificate (mqtts://)")]
TlsKey = Annotated[Path | None, typer.Option(help="client certificate's key (mqtts://)")]
Deployment = Annotated[
    str, typer.Option(help="deployment name: topics are ddnn/<deployment>/<model version>/")
]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error")]
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def broker_settings(
    url: str,
    mqtt: str = "5",
    username: str | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> BrokerSettings:
    from ddnn.errors import ConfigError

    if mqtt not in ("5", "3.1.1"):
        raise ConfigError(f"--mqtt must be 5 or 3.1.1, got {mqtt!r}")
    return BrokerSettings.from_url(
        url,
        protocol=mqtt,
        username=username,
        password=password,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def setup_logging(level: str) -> None:
    from ddnn.errors import ConfigError

    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level must be debug, info, warning or error, got {level!r}")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
