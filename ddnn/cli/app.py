"""The `ddnn` Typer application and its command groups; the commands register themselves
on them (ddnn/cli/data.py, model.py, compare.py, live.py)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Distributed deep neural networks over the cloud, the edge and end devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Measure the parts the live system is built on.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
compare_app = typer.Typer(
    help="Seed 000's comparisons on your data: training strategies, one vs two early exits, "
    "hybrid precision.",
    no_args_is_help=True,
)
app.add_typer(compare_app, name="compare")
