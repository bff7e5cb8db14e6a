"""`ddnn data`: making data sets (synthetic, or from your own recordings) and inspecting them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddnn.cli.app import app
from ddnn.cli.options import JsonFlag
from ddnn.cli.render import Block, Rows, progress_bar, show
from ddnn.core.errors import DataError
from ddnn.core.files import writable_file
from ddnn.data import (
    DEFAULT_SYNTH_SAMPLES,
    DEFAULT_SYNTH_SEED,
    from_mvmc_arrays,
    load_mvmc,
    parse_grid,
    save_mvmc,
    synth,
)
from ddnn.data.inspection import (
    contact_sheet,
    describe,
    sheet_rows,
    writable_sheet,
    write_sheet,
)
from ddnn.data.recordings import import_images, import_videos, read_labels

# ---------------------------------------------------------------------------------- data


data_app = typer.Typer(help="Make and inspect data sets.", no_args_is_help=True)
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


@data_app.command("import")
def data_import(
    out_path: Annotated[Path, typer.Option("--out", help="the .npz file to write")],
    labels_path: Annotated[
        Path,
        typer.Option(
            "--labels",
            help="CSV with the header sample,label[,cam0,cam1,...]: a row per sample, its "
            "label (car, bus, person) and, optionally, 1 or 0 per camera that sees it or not",
        ),
    ],
    images: Annotated[
        Path | None,
        typer.Option(help="folder of camera folders cam0/, cam1/, ... of <sample id>.png files"),
    ] = None,
    videos: Annotated[
        Path | None,
        typer.Option(help="folder of videos cam0.<ext>, cam1.<ext>, ...; frame index = sample id"),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(help="resize every frame to HxW, e.g. 32x32 (OpenCV's INTER_AREA)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import your own synchronized cameras' recordings (image folders or videos) and a CSV of
    labels into an MVMC-format set."""
    if (images is None) == (videos is None):
        raise DataError("give either --images DIR or --videos DIR")
    shape = None if size is None else parse_grid(size, "size", "32x32 (height x width)")
    writable_file(out_path, "data file")
    labels = read_labels(labels_path)
    read = import_images if videos is None else import_videos
    with progress_bar("importing", len(labels.rows), as_json) as advance:
        recording = read(images or videos, labels, shape, lambda d: advance(completed=d))
    data = from_mvmc_arrays(recording.x, recording.y, name=str(out_path))
    save_mvmc(out_path, recording.x, recording.y)
    summary = {
        "path": str(out_path),
        **describe(data),
        "unlabelled_frames_skipped": recording.unlabelled,
        "absent_frames_left_out": recording.marked_absent,
    }
    show(
        summary,
        as_json,
        [
            f"wrote {len(data)} samples to {out_path}",
            *_described(summary),
            f"unlabelled frames skipped: {recording.unlabelled}; frames of views marked "
            f"not seen (cam<i> = 0) left out: {recording.marked_absent}",
        ],
    )


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="an MVMC-format .npz")],
    sheet: Annotated[
        Path | None,
        typer.Option(help="the contact sheet PNG to write (default: <FILE stem>-sheet.png)"),
    ] = None,
    samples: Annotated[
        int, typer.Option(min=1, help="samples on the contact sheet, evenly spread")
    ] = 8,
    as_json: JsonFlag = False,
) -> None:
    """Classes, views present per camera and view shape of an MVMC-format set, and a contact
    sheet PNG of some of its samples (rows) by camera (columns)."""
    data = load_mvmc(path)
    sheet = writable_sheet(sheet or path.with_name(f"{path.stem}-sheet.png"))
    rows = sheet_rows(len(data), samples)
    write_sheet(sheet, contact_sheet(data, rows))
    summary = {"path": str(path), **describe(data), "sheet": str(sheet), "sheet_samples": rows}
    show(
        summary,
        as_json,
        [f"{data.name}", *_described(summary), f"contact sheet of samples {rows}: {sheet}"],
    )


def _described(summary: dict[str, Any]) -> list[Block]:
    """`describe`'s figures for a person: a line, and a table of views per camera."""
    c, h, w = summary["view_shape"]
    classes = ", ".join(f"{k} {n}" for k, n in summary["classes"].items())
    views = zip(summary["views_present"], summary["views_present_percent"], strict=True)
    return [
        f"{summary['samples']} samples ({classes}), {summary['cameras']} cameras, views of "
        f"{c}x{h}x{w} (CxHxW)",
        Rows(
            "views present",
            [{"camera": f"cam{i}", "views": n, "%": p} for i, (n, p) in enumerate(views)],
        ),
    ]
