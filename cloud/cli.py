"""`ddnn edge` and `ddnn cloud`: the commands that start the upper tiers, which share one
service (`cloud.service.TierService`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ddnn.core.errors import DDNNError
from ddnn.core.roles import CLOUD, Role, tier_inputs
from ddnn.live.service_cli import Artifacts, ServiceSetup, service_command

# Every `ddnn` command loads the service commands (their entry points) to list them, a device
# too: the tier service and the model code, which import PyTorch, are imported inside the
# commands that run them, so that nothing else pays for (or needs) PyTorch.


@service_command
def cloud(
    setup: ServiceSetup,
    artifacts: Artifacts,
    deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the feature maps")
    ] = 1.0,
    group: Annotated[
        str | None,
        typer.Option(
            help="run as one replica of this group (an MQTT 5 shared subscription), taking "
            "whole jobs from an aggregator started with --replicated-cloud"
        ),
    ] = None,
) -> None:
    """Run the cloud: fuse the feature maps of the tier below, run the cloud layers and
    answer the aggregator with the last exit's class scores."""
    from cloud.service import TierService
    from ddnn.nn.export import load_cloud

    manifest, module = load_cloud(artifacts)
    broker = setup.login(artifacts, CLOUD, manifest.model_version)
    if group is not None and broker.protocol != "5":
        raise DDNNError(
            "--group shares jobs through an MQTT 5 shared subscription: not over MQTT "
            f"{broker.protocol} (the embedded broker speaks only 3.1.1; use mosquitto)"
        )
    TierService(
        CLOUD,
        manifest,
        module,
        tier_inputs(manifest.ddnn_config().model, CLOUD),
        module.in_shape,
        broker,
        setup.deployment,
        deadline=deadline,
        group=group,
    ).run()


@service_command
def edge(
    setup: ServiceSetup,
    artifacts: Artifacts,
    edge_id: Annotated[int, typer.Option("--id", min=0, help="which edge of the model")],
    deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the group's feature maps")
    ] = 1.0,
) -> None:
    """Run one edge: fuse its group's feature maps, run the edge layers, answer the
    aggregator with class scores, pass its own feature map to the cloud when asked."""
    from cloud.service import TierService
    from ddnn.nn.export import load_edge

    manifest, module = load_edge(artifacts, edge_id)
    model = manifest.ddnn_config().model
    role = Role.edge(edge_id)
    TierService(
        role,
        manifest,
        module,
        tier_inputs(model, role),
        module.in_shape,
        setup.login(artifacts, role, manifest.model_version),
        setup.deployment,
        output_format=model.edge_feature_format,
        deadline=deadline,
    ).run()
