"""`ddnn aggregator`: the command that starts the local aggregator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from aggregator.service import AggregatorService, Deadlines
from aggregator.weights import ExitWeights, load_exit_weights
from ddnn.core.errors import DDNNError
from ddnn.core.roles import AGGREGATOR
from ddnn.live.service_cli import (
    Artifacts,
    Durability,
    DurabilityOption,
    ServiceSetup,
    service_command,
)


def robust(weights: ExitWeights) -> ExitWeights:
    """`weights` with the local exit's fusion trimmed (ddnn/core/fusion.py): `--robust-fusion`."""
    local = weights.fusions["local"].trimmed()
    return replace(weights, fusions={**weights.fusions, "local": local})


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
    replicated_cloud: Annotated[
        bool,
        typer.Option(
            help="gather the cloud's feature maps here and send each sample's as one job, "
            "for a cloud replicated behind a shared subscription (`ddnn cloud --group`)"
        ),
    ] = False,
    robust_fusion: Annotated[
        bool,
        typer.Option(
            help="trimmed fusion at the local exit: per class, the highest and lowest of 3+ "
            "devices are left out, so that one lying device cannot force the exit (on by "
            "itself where the model's config has local.robust; offline: ddnn eval "
            "--robust-fusion)"
        ),
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            help="folder for the ledger of decided samples and the journal of decisions on "
            "their way, so that a restarted aggregator decides none twice and loses none "
            "(default: state/ in --artifacts; one aggregator at a time)"
        ),
    ] = None,
    durability: DurabilityOption = Durability.none,
) -> None:
    """Run the local aggregator: fuse the devices' class scores, exit when confident,
    otherwise escalate; publish exactly one decision per sample, also across restarts."""
    manifest, weights = load_exit_weights(artifacts)
    if robust_fusion:
        weights = robust(weights)
    if clock not in ("tick", "wall"):
        raise DDNNError(f"--clock must be tick or wall, got {clock!r}")
    deadlines = Deadlines(score_deadline, edge_deadline, cloud_deadline)
    folder = state if state is not None else artifacts / "state"
    if folder.exists() and not folder.is_dir():
        raise DDNNError(f"--state {folder} is a file: give it a folder (made if missing)")
    ledger = folder / f"decided-{setup.deployment}-{manifest.model_version}.ids"
    service = AggregatorService(
        manifest,
        weights,
        setup.login(artifacts, AGGREGATOR, manifest.model_version),
        setup.deployment,
        deadlines,
        clock,
        ledger,
        replicated_cloud,
        durability,
    )
    service.limit_rate(setup.frame_rate)
    service.run()
