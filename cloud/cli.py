"""`ddnn cloud`: the command that starts the cloud tier."""

from __future__ import annotations

from typing import Annotated

import typer

from ddnn.service_cli import Artifacts, ServiceSetup, service_command


@service_command
def cloud(
    setup: ServiceSetup,
    artifacts: Artifacts,
    deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the feature maps")
    ] = 1.0,
) -> None:
    """Run the cloud: fuse the feature maps of the tier below, run the cloud layers and
    answer the aggregator with the last exit's class scores."""
    from ddnn.export import load_cloud
    from ddnn.tier import TierService

    manifest, module = load_cloud(artifacts)
    model = manifest.ddnn_config().model
    below = (
        [f"edge-{e}" for e in range(len(model.edge.groups))]
        if model.edge is not None
        else [f"device-{d}" for d in range(model.n_devices)]
    )
    TierService(
        "cloud",
        manifest,
        module,
        below,
        module.in_shape,
        setup.broker,
        setup.deployment,
        deadline=deadline,
    ).run()
