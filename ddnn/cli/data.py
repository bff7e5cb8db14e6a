"""`ddnn data`: making data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddnn.cli.app import app
from ddnn.cli.options import JsonFlag
from ddnn.cli.render import progress_bar, show
from ddnn.core.files import writable_file
from ddnn.data import DEFAULT_SYNTH_SAMPLES, DEFAULT_SYNTH_SEED, save_mvmc, synth

# ---------------------------------------------------------------------------------- data


data_app = typer.Typer(help="Make data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out_path: Annotated[Path, typer.Option("--out", help="the .npz file to write")],
    samples: Annotated[int, typer.Option(min=1, help="number of samples")] = DEFAULT_SYNTH_SAMPLES,
    seed: Annotated[
        int, typer.Option(help="random seed; the same seed gives the same file")
    ] = DEFAULT_SYNTH_SEED,
    as_json: JsonFlag = False,
) -> None:
    """Generate a synthetic multi-view multi-camera set in the MVMC format."""
    writable_file(out_path, "data file")
    with progress_bar("rendering", samples, as_json) as advance:
        x, y = synth.synthesize(samples, seed=seed, progress=lambda d: advance(completed=d))
    save_mvmc(out_path, x, y)
    absent = (y == synth.ABSENT).mean(axis=0)
    summary = {
        "path": str(out_path),
        "samples": samples,
        "seed": seed,
        "absent_fraction_per_camera": [round(float(a), 3) for a in absent],
    }
    absent_text = ", ".join(f"{a:.0%}" for a in absent)
    show(
        summary,
        as_json,
        [f"wrote {samples} samples to {out_path}; absent per camera: {absent_text}"],
    )
