"""`ddnn cloud`: the command that starts the cloud tier."""

from __future__ import annotations

from typing import Annotated

import typer

from ddnn.service_cli import (
    DEFAULT_BROKER,
    Artifacts,
    Broker,
    Deployment,
    LogLevel,
    MqttVersion,
    Password,
    TlsCa,
    TlsCert,
    TlsKey,
    Username,
    broker_settings,
    setup_logging,
)


def cloud(
    artifacts: Artifacts,
    deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the feature maps")
    ] = 1.0,
    broker: Broker = DEFAULT_BROKER,
    mqtt: MqttVersion = "5",
    username: Username = None,
    password: Password = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    deployment: Deployment = "default",
    log_level: LogLevel = "info",
) -> None:
    """Run the cloud: fuse the feature maps of the tier below, run the cloud layers and
    answer the aggregator with the last exit's class scores."""
    from ddnn.export import load_cloud
    from ddnn.tier import TierService

    setup_logging(log_level)
    settings = broker_settings(broker, mqtt, username, password, tls_ca, tls_cert, tls_key)
    manifest, module = load_cloud(artifacts)
    model = manifest.ddnn_config().model
    below = (
        [f"edge-{e}" for e in range(len(model.edge.groups))]
        if model.edge is not None
        else [f"device-{d}" for d in range(model.n_devices)]
    )
    TierService(
        "cloud", manifest, module, below, module.in_shape, settings, deployment, deadline=deadline
    ).run()
