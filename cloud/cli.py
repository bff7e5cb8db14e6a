"""`ddnn edge` and `ddnn cloud`: the commands that start the upper tiers, which share one
service (`cloud.service.TierService`) and one choice of runtime (cloud/runtime.py)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from cloud.runtime import open_tier
from cloud.service import TierService
from ddnn.core.errors import DDNNError
from ddnn.core.roles import CLOUD, Role, tier_inputs
from ddnn.live.service_cli import Artifacts, ServiceSetup, service_command

Runtime = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="packed: the bit-packed tier, NumPy only (numba kernels when installed); torch: "
        "PyTorch; auto: packed when the export holds a packed form of the tier (a binary "
        "tier fused by CC or MP, on binary maps), else torch",
    ),
]


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
    runtime_name: Runtime = "auto",
) -> None:
    """Run the cloud: fuse the feature maps of the tier below, run the cloud layers and
    answer the aggregator with the last exit's class scores."""
    runtime = open_tier(artifacts, CLOUD, runtime_name)
    logging.getLogger(f"ddnn.{CLOUD}").info("tier runtime: %s", runtime.name)
    assert runtime.manifest is not None  # opened from an export
    broker = setup.login(artifacts, CLOUD, runtime.manifest.model_version)
    if group is not None and broker.protocol != "5":
        raise DDNNError(
            "--group shares jobs through an MQTT 5 shared subscription: not over MQTT "
            f"{broker.protocol} (the embedded broker speaks only 3.1.1; use mosquitto)"
        )
    service = TierService(
        CLOUD,
        runtime,
        tier_inputs(runtime.manifest.ddnn_config().model, CLOUD),
        broker,
        setup.deployment,
        deadline=deadline,
        group=group,
    )
    service.limit_rate(setup.frame_rate)
    service.run()


@service_command
def edge(
    setup: ServiceSetup,
    artifacts: Artifacts,
    edge_id: Annotated[int, typer.Option("--id", min=0, help="which edge of the model")],
    deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the group's feature maps")
    ] = 1.0,
    runtime_name: Runtime = "auto",
) -> None:
    """Run one edge: fuse its group's feature maps, run the edge layers, answer the
    aggregator with class scores, pass its own feature map to the cloud when asked."""
    role = Role.edge(edge_id)
    runtime = open_tier(artifacts, role, runtime_name)
    logging.getLogger(f"ddnn.{role}").info("tier runtime: %s", runtime.name)
    assert runtime.manifest is not None  # opened from an export
    model = runtime.manifest.ddnn_config().model
    service = TierService(
        role,
        runtime,
        tier_inputs(model, role),
        setup.login(artifacts, role, runtime.manifest.model_version),
        setup.deployment,
        output_format=model.edge_feature_format,
        deadline=deadline,
    )
    service.limit_rate(setup.frame_rate)
    service.run()
