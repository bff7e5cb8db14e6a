"""A device's slice off the Python path: `ddnn inspect` (layers, bytes; with --mcu, on a
Cortex-M under QEMU) and `ddnn codegen` (C99 source)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddnn.cli.app import app
from ddnn.cli.options import JsonFlag
from ddnn.cli.render import Rows, show
from ddnn.core.errors import DDNNError
from ddnn.ops.cslice import camera_test_frames
from ddnn.ops.mcu.run import CORES, MHZ, run_on_mcu
from ddnn.packed.codegen import generate
from ddnn.packed.inspect import inspect_artifact, read_exported


@app.command("inspect")
def inspect_(
    artifact: Annotated[
        Path, typer.Argument(help="a `ddnn export` directory, or a packed slice file (.bits)")
    ],
    device: Annotated[
        int, typer.Option(min=0, help="which device's slice, for an export directory")
    ] = 0,
    mcu: Annotated[
        str | None,
        typer.Option(
            help=f"also build the slice as C for this core ({', '.join(CORES)}) and run it "
            "under QEMU on test frames, checked bit for bit: flash, RAM, instructions per frame"
        ),
    ] = None,
    frames: Annotated[int, typer.Option(min=1, help="test frames to run with --mcu")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Show a bit-packed device slice: its layers, parameter count and bytes in memory."""
    report = inspect_artifact(artifact, device)
    rows = [
        {k: "x".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
        for row in report["layers"]
    ]
    summary = [
        f"{report['parameters']} parameters; {report['weights_bytes']} bytes of weights and "
        f"thresholds in memory (as float32 in torch: {report['torch_float32_bytes']}); "
        f"file {report['file_bytes']} bytes"
    ]
    if mcu is not None:
        if not artifact.is_dir():
            raise DDNNError("--mcu runs the slice on the export's test frames: give the export")
        model, _ = read_exported(artifact, device)
        on = report["mcu"] = run_on_mcu(model, camera_test_frames(artifact, device, frames), mcu)
        verdict = "bit-exact" if on["exact"] else f"{on['mismatched_frames']} frames DIFFER"
        summary.append(
            f"{on['mcu']} under QEMU ({on['board']}): {on['frames']} frames {verdict} with the "
            f"packed runtime; flash {on['flash_bytes']} B, RAM {on['ram_bytes']} B (stack "
            f"{on['stack_bytes']}); {on['instructions_per_frame']} instructions a frame, "
            f"~{on[f'ms_per_frame_at_{MHZ}mhz']} ms at {MHZ} MHz"
        )
    title = f"{report['file']} (packed format v{report['format_version']})"
    show(report, as_json, [Rows(title, rows), *summary])


@app.command("codegen")
def codegen(
    artifacts: Annotated[Path, typer.Argument(help="a `ddnn export` directory")],
    out: Annotated[Path, typer.Option("--out", help="folder for device-<i>/ddnn_slice.{h,c}")],
    device: Annotated[
        list[int] | None, typer.Option(min=0, help="only this device (repeatable)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write each device's bit-packed slice as C99 (no heap, the C library alone): one entry
    point, `ddnn_device_run(pixels, scores, feature_bits)`, a uint8 frame in, the class
    scores and the wire's feature bits out, bit for bit as the packed runtime gives them."""
    written = generate(artifacts, out, device)
    rows = [
        {"device": d, "folder": str(files[0].parent), "bytes": sum(f.stat().st_size for f in files)}
        for d, files in written.items()
    ]
    show({"out": str(out), "devices": rows}, as_json, [Rows(f"C slices in {out}", rows)])
