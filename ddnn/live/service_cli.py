"""Command-line options every service shares, and how a service process is set up.

The service commands (`ddnn device`, `aggregator`, `edge`, `cloud`) live in their own
packages and reach the `ddnn` command through the `ddnn.services` entry points, so that this
library depends on none of them. Heavy imports (PyTorch, the model) happen inside the
command bodies: `ddnn --help` stays instant.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ddnn.core.errors import ConfigError
from ddnn.core.roles import Role
from ddnn.live.access import credentials_for, login_for
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.rates import DEFAULT_FRAME_RATE

BATCH_SECONDS = 0.01  # durability "batch": decisions wait at most this long for their fsync


class Durability(StrEnum):
    """What a decision survives before it is published: `none`, a killed process (the
    journal is written, the kernel holds it); `batch`, a lost machine too, decisions waiting
    up to BATCH_SECONDS for one fsync of them all; `decision`, one fsync per decision."""

    none = "none"
    batch = "batch"
    decision = "decision"


DurabilityOption = Annotated[
    Durability,
    typer.Option(
        help="what the aggregator's decisions survive before they are published: none (a "
        "killed process), batch (a lost machine too: one fsync per 10 ms of decisions), "
        "decision (one fsync each); README, Reliability: what each costs"
    ),
]

Artifacts = Annotated[
    Path, typer.Option("--artifacts", help="a directory written by `ddnn export`")
]

# The options every service takes, as (name, annotation, default).
SHARED_OPTIONS: list[tuple[str, Any, Any]] = [
    (
        "broker",
        Annotated[str, typer.Option(help="mqtt://host:port, or mqtts://host:port for TLS")],
        "mqtt://127.0.0.1:1883",
    ),
    ("mqtt", Annotated[str, typer.Option(help="MQTT version the broker speaks: 5 or 3.1.1")], "5"),
    (
        "quick_ack",
        Annotated[
            bool,
            typer.Option(
                help="acknowledge the broker's packets at once, for a broker that leaves "
                "Nagle's algorithm on (rumqttd): else its replies can wait ~40 ms"
            ),
        ],
        False,
    ),
    ("username", Annotated[str | None, typer.Option(help="broker user name")], None),
    (
        "password",
        Annotated[str | None, typer.Option(envvar="DDNN_MQTT_PASSWORD", help="broker password")],
        None,
    ),
    (
        "credentials",
        Annotated[
            Path | None,
            typer.Option(
                help="this role's credentials file from `ddnn credentials` (default: the "
                "one in --artifacts for this role and --deployment, if any)"
            ),
        ],
        None,
    ),
    ("tls_ca", Annotated[Path | None, typer.Option(help="CA bundle to trust (mqtts://)")], None),
    ("tls_cert", Annotated[Path | None, typer.Option(help="client certificate (mqtts://)")], None),
    ("tls_key", Annotated[Path | None, typer.Option(help="the client certificate's key")], None),
    (
        "deployment",
        Annotated[str, typer.Option(help="topics are ddnn/<deployment>/<model version>/")],
        "default",
    ),
    ("log_level", Annotated[str, typer.Option(help="debug, info, warning or error")], "info"),
    (
        "frame_rate",
        Annotated[
            float,
            typer.Option(
                min=0.0,
                help="samples per second the deployment runs at: each account's topics may "
                "bring 4 messages a frame, more are dropped and counted (0: no limit)",
            ),
        ],
        DEFAULT_FRAME_RATE,
    ),
]


@dataclass
class ServiceSetup:
    """What the shared options amount to: where the broker is, which deployment, and the
    credentials file asked for."""

    broker: BrokerSettings
    deployment: str
    credentials: Path | None = None
    frame_rate: float = DEFAULT_FRAME_RATE  # sizes each account's token bucket (rates.py)

    def login(self, artifacts: Path | None, role: Role | str, model_version: str) -> BrokerSettings:
        """The broker settings `role` (or another account: `observer`) connects with:
        --username/--password when given, else the --credentials file, else the account `ddnn
        credentials` made for `role` of this deployment in `artifacts` when there is one,
        else anonymous."""
        if self.broker.username is not None:
            return self.broker
        if self.credentials is not None:
            login = credentials_for(self.credentials, role, self.deployment, model_version)
        else:
            login = (
                None
                if artifacts is None
                else login_for(artifacts, role, self.deployment, model_version)
            )
            if login is None:
                return self.broker
        logging.getLogger(f"ddnn.{role}").info("logging in as %s", login.username)
        return self.broker.model_copy(
            update={"username": login.username, "password": login.password}
        )


def service_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a service command the shared options; it receives them as `setup: ServiceSetup`.

    The wrapper's signature is the command's own options followed by the shared ones, which
    is what typer reads, so every service documents and parses them the same way.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(fn).parameters.values()
        if p.name != "setup"
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in SHARED_OPTIONS
    ]

    @functools.wraps(fn)
    def command(**options: Any) -> None:
        values = {name: options.pop(name) for name, _, _ in SHARED_OPTIONS}
        setup_logging(values.pop("log_level"))
        deployment, credentials = values.pop("deployment"), values.pop("credentials")
        frame_rate = values.pop("frame_rate")
        setup = ServiceSetup(broker_settings(**values), deployment, credentials, frame_rate)
        fn(setup=setup, **options)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def broker_settings(
    broker: str,
    mqtt: str = "5",
    quick_ack: bool = False,
    username: str | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> BrokerSettings:
    return BrokerSettings.from_url(
        broker,
        protocol=mqtt,
        quick_ack=quick_ack,
        username=username,
        password=password,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def setup_logging(level: str) -> None:
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level must be debug, info, warning or error, got {level!r}")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
