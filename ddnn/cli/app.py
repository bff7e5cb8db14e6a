"""The `ddnn` Typer application and its command groups; the commands register themselves
on them (ddnn/cli/data.py, model.py, compare.py, live.py)."""

from __future__ import annotations

import inspect

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
    help="The hybrid-precision paper's comparisons on your data: training strategies, "
    "one vs two early exits, "
    "hybrid precision.",
    no_args_is_help=True,
)
app.add_typer(compare_app, name="compare")


def reflowed(text: str) -> str:
    """`text` (a docstring) with each paragraph on one line: the help panels wrap it to the
    terminal's width, and a line break kept from the source would break a sentence there."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def reflow_help(group: typer.Typer) -> None:
    """Every command's help in `group` and its sub-groups, reflowed (`reflowed`)."""
    for command in group.registered_commands:
        text = command.help or inspect.getdoc(command.callback) or ""
        command.help = reflowed(text)
    for sub in group.registered_groups:
        reflow_help(sub.typer_instance)
