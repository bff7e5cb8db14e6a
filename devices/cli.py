"""`ddnn device`: the command that starts one end device."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ddnn.core.errors import DDNNError
from ddnn.core.hard import DEFAULT_ENTROPY, HardRule
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import Role
from ddnn.live.service_cli import Artifacts, ServiceSetup, service_command
from devices.runtime import open_slice
from devices.service import DeviceService
from devices.sources import open_device_source


@service_command
def device(
    setup: ServiceSetup,
    artifacts: Artifacts,
    device_id: Annotated[int, typer.Option("--id", min=0, help="which device of the model")],
    source: Annotated[
        str | None,
        typer.Option(
            help="frames: synth | mvmc:PATH | tiles:PATH (replay of the model's test part; "
            "the set must fit the model), frames:PATH (a raw uint8 frame file, `ddnn "
            "device-frames`), camera:N, a video file, an rtsp:// URL or an image folder "
            "(default: replay the data the model was trained on)"
        ),
    ] = None,
    clock: Annotated[
        str, typer.Option(help="tick: capture on tick messages (lockstep); wall: free-run at --fps")
    ] = "tick",
    fps: Annotated[float, typer.Option(min=0.01, help="frame rate of the wall clock")] = 10.0,
    keep_seconds: Annotated[
        float, typer.Option(help="how long feature maps wait for an offload request")
    ] = 10.0,
    runtime_name: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="packed: the bit-packed slice, NumPy only (numba kernels when installed); "
            "torch: PyTorch; auto: packed when the export holds a packed slice for this "
            "device (a binary device tier), else torch",
        ),
    ] = "auto",
    capture: Annotated[
        bool,
        typer.Option(
            help="send the frame of every sample whose decision is hard (escalated, "
            "degraded, abstained or unsure) to `ddnn capture`: only where the deployment's "
            "accounts allow it (`ddnn credentials --capture`), since frames then leave the "
            "camera"
        ),
    ] = False,
    capture_entropy: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="with --capture: a decision above this normalized entropy is hard (give "
            "`ddnn capture --entropy` the same level)",
        ),
    ] = DEFAULT_ENTROPY,
) -> None:
    """Run one end device: its binarized slice on every frame, class scores to the local
    aggregator, bit-packed feature maps to the edge or cloud when asked (and, with
    --capture, the frames of hard samples to `ddnn capture`)."""
    if clock not in ("tick", "wall"):
        raise DDNNError(f"--clock must be tick or wall, got {clock!r}")
    manifest = read_manifest(artifacts)
    cfg = manifest.ddnn_config()
    if device_id >= cfg.model.n_devices:
        raise DDNNError(f"--id {device_id}: the model has devices 0..{cfg.model.n_devices - 1}")
    log = logging.getLogger(f"ddnn.{Role.device(device_id)}")
    runtime = open_slice(artifacts, device_id, runtime_name)
    log.info("slice runtime: %s", runtime.name)
    frames = open_device_source(manifest, device_id, source)
    log.info("frames: %s", frames.name)
    service = DeviceService(
        runtime.manifest,
        device_id,
        runtime,
        frames,
        setup.login(artifacts, Role.device(device_id), runtime.manifest.model_version),
        setup.deployment,
        clock=clock,
        fps=fps,
        keep_seconds=keep_seconds,
        hard=HardRule(capture_entropy) if capture else None,
    )
    service.limit_rate(setup.frame_rate)
    try:
        service.run()
    finally:
        frames.close()
