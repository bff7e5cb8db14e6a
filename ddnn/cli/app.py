"""The `ddnn` Typer application: one table of its commands (`COMMANDS`), each module of
ddnn/cli imported only when one of its commands runs or shows its own help. Listing them
(`ddnn --help`) reads the table; the live services' commands come from the `ddnn.services`
entry points (pyproject.toml) and load only when named, or listed."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import click
import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class Command:
    module: str  # of ddnn/cli, which registers it on `app` when imported
    summary: str  # its line in `ddnn --help`
    panel: str


MODELS, LIVE, PAPERS, SERVICES = "Data and models", "The live system", "The papers", "Services"
COMMANDS: dict[str, Command] = {
    "data": Command("data", "Make and inspect data sets.", MODELS),
    "train": Command("model", "Train a DDNN and pick its exit thresholds.", MODELS),
    "eval": Command("model", "Accuracy, exits and bytes of a model or an export.", MODELS),
    "hard": Command("model", "A data set's hard examples for a model, to train on.", MODELS),
    "sweep": Command("model", "The local exit threshold over 0..1 (the paper's Table II).", MODELS),
    "calibrate": Command("model", "Pick exit thresholds and store them in the model.", MODELS),
    "router": Command("model", "A learned router against entropy thresholds.", MODELS),
    "baseline": Command("model", "Each device's slice trained alone.", MODELS),
    "results": Command("model", "The README's results table over seeds.", MODELS),
    "config": Command("model", "The effective configuration.", MODELS),
    "export": Command("model", "One artifact per role, a manifest and broker accounts.", MODELS),
    "inspect": Command(
        "slices", "A bit-packed device slice: layers, bytes; on a Cortex-M.", MODELS
    ),
    "codegen": Command("slices", "Each device's bit-packed slice as C99 source.", MODELS),
    "demo": Command("live", "The whole live system on this machine.", LIVE),
    "faults": Command("live", "Faults injected into a live deployment.", LIVE),
    "monitor": Command("monitor", "Watch a running deployment.", LIVE),
    "broker": Command("broker", "A local MQTT broker for an export's accounts.", LIVE),
    "credentials": Command("broker", "Broker accounts for another deployment.", LIVE),
    "asyncapi": Command("protocol", "The wire protocol as an AsyncAPI 3 document.", LIVE),
    "bench": Command("bench", "Measure the parts the live system is built on.", LIVE),
    "report": Command("report", "The papers' tables and figures on our data.", PAPERS),
    "compare": Command("compare", "The hybrid-precision paper's comparisons.", PAPERS),
}


class LazyCommands(TyperGroup):
    """The commands of `COMMANDS` and of the services' entry points, each built when named."""

    listing = False  # while the group's own help is drawn: summaries, nothing imported

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *sorted(_services())]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        services = _services()
        if cmd_name in COMMANDS and self.listing:
            entry = COMMANDS[cmd_name]
            placeholder = click.Command(cmd_name, short_help=entry.summary)
            placeholder.rich_help_panel = entry.panel  # type: ignore[attr-defined]
            return placeholder
        if cmd_name in COMMANDS:
            importlib.import_module(f"ddnn.cli.{COMMANDS[cmd_name].module}")
        elif cmd_name in services:
            if cmd_name not in _registered:
                app.command(cmd_name, rich_help_panel=SERVICES)(services[cmd_name].load())
                _registered.add(cmd_name)
        else:
            return None
        reflow_help(app)
        return typer.main.get_group(app).commands.get(cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


_registered: set[str] = set()  # the services' commands put on `app` so far


@cache
def _services() -> dict[str, Any]:
    """The live services' commands: name -> entry point (read once)."""
    return {ep.name: ep for ep in entry_points(group="ddnn.services")}


app = typer.Typer(
    cls=LazyCommands,
    help="Distributed deep neural networks over the cloud, the edge and end devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """(`app` is a group of commands even before any is registered.)"""


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
