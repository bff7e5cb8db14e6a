"""`ddnn capture`: the command that starts the hard-example capture of a deployment."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from capture.folder import BUILT, CaptureFolder, build
from capture.service import DEFAULT_RATE, DEFAULT_WAIT, CaptureService
from ddnn.core.errors import DDNNError
from ddnn.core.hard import DEFAULT_ENTROPY, HardRule
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import CAPTURE
from ddnn.live.service_cli import ServiceSetup, service_command


@service_command
def capture(
    setup: ServiceSetup,
    out: Annotated[
        Path,
        typer.Option(
            help="the capture folder: cam<i>/<sample>.png and labels.csv, as `ddnn data "
            "import --images` reads them, and captured.npz when the service stops (a folder "
            "of an earlier capture is continued)"
        ),
    ],
    artifacts: Annotated[
        Path | None,
        typer.Option(help="a directory written by `ddnn export` (not with --build)"),
    ] = None,
    entropy: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="a decision above this normalized entropy is hard: the level the devices' "
            "--capture-entropy has",
        ),
    ] = DEFAULT_ENTROPY,
    quota_mb: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="stop capturing (for good; the deployment goes on) before the folder's "
            "frames and labels pass this many MB (10^6 bytes; 0: no quota)",
        ),
    ] = 1000.0,
    rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="hard samples captured per second at most (bursts of one second's worth); "
            "the rest are dropped and counted (0: no limit)",
        ),
    ] = DEFAULT_RATE,
    wait: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="seconds a hard sample waits for its devices' frames before it is written "
            "with those that came",
        ),
    ] = DEFAULT_WAIT,
    build_only: Annotated[
        bool,
        typer.Option(
            "--build",
            help=f"only write {BUILT} (the MVMC format) from the folder, with the labels "
            "as they are now, and exit",
        ),
    ] = False,
) -> None:
    """Capture the hard examples of a deployment (escalated past the local exit, degraded,
    abstained or unsure) into a folder for labelling: each device's frame of each such
    sample, and a CSV row with the decision. Needs accounts with capture (`ddnn credentials
    --capture`) and devices started with --capture."""
    log = logging.getLogger(f"ddnn.{CAPTURE}")
    if build_only:
        log.info("wrote %d samples to %s", build(out), out / BUILT)
        return
    if artifacts is None:
        raise DDNNError("give --artifacts (an export), or --build to only build the file")
    manifest = read_manifest(artifacts)
    model = manifest.ddnn_config().model
    quota = None if quota_mb == 0 else int(quota_mb * 1e6)
    service = CaptureService(
        manifest,
        setup.login(artifacts, CAPTURE, manifest.model_version),
        setup.deployment,
        CaptureFolder(out, model.n_devices, quota),
        HardRule(entropy),
        rate=rate,
        wait=wait,
    )
    service.limit_rate(setup.frame_rate)
    service.run()
