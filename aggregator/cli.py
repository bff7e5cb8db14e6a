"""`ddnn aggregator` and `ddnn edge`: the commands that start the local and edge tiers."""

from __future__ import annotations

from typing import Annotated

import typer

from ddnn.service_cli import Artifacts, ServiceSetup, service_command


@service_command
def aggregator(
    setup: ServiceSetup,
    artifacts: Artifacts,
    score_deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the devices' class scores")
    ] = 1.0,
    edge_deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the edges' answer")
    ] = 2.0,
    cloud_deadline: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for the cloud's answer")
    ] = 3.0,
    clock: Annotated[
        str, typer.Option(help="tick: samples start with tick messages; wall: with any scores")
    ] = "tick",
) -> None:
    """Run the local aggregator: fuse the devices' class scores, exit when confident,
    otherwise escalate; publish exactly one decision per sample."""
    from aggregator.service import AggregatorService, Deadlines
    from ddnn.errors import DDNNError
    from ddnn.export import load_aggregator

    manifest, local, edge_exit = load_aggregator(artifacts)
    if clock not in ("tick", "wall"):
        raise DDNNError(f"--clock must be tick or wall, got {clock!r}")
    deadlines = Deadlines(score_deadline, edge_deadline, cloud_deadline)
    service = AggregatorService(
        manifest, local, edge_exit, setup.broker, setup.deployment, deadlines, clock
    )
    service.run()


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
    from ddnn.export import load_edge
    from ddnn.tier import TierService

    manifest, module = load_edge(artifacts, edge_id)
    model = manifest.ddnn_config().model
    assert model.edge is not None  # load_edge refuses a topology without this edge
    TierService(
        f"edge-{edge_id}",
        manifest,
        module,
        [f"device-{d}" for d in model.edge.groups[edge_id]],
        module.in_shape,
        setup.broker,
        setup.deployment,
        output_kind="binary" if model.edge.precision == "binary" else "float",
        deadline=deadline,
    ).run()
