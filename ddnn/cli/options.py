"""Options and arguments the commands share, and how they are read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddnn import data as data_mod
from ddnn.cli.render import json_mode, progress_bar
from ddnn.core.config import DDNNConfig, FittedSettingError, load_config
from ddnn.core.errors import ConfigError, DDNNError
from ddnn.data import MultiViewData

DataSpec = Annotated[
    str,
    typer.Option(
        "--data",
        help="synth (the default synthetic set; synth:n=N,seed=S another size or seed of it, "
        "fresh data of the same world), mvmc:PATH (an MVMC-format .npz) or "
        "tiles:PATH (an .npz of images X (N,H,W[,C]) and labels y (N,), cut into --grid views)",
    ),
]
Grid = Annotated[str, typer.Option(help="views per image for tiles:PATH, as ROWSxCOLS")]
OptionalGrid = Annotated[str | None, typer.Option(help="views per image for tiles:PATH")]
JsonFlag = Annotated[
    bool,
    typer.Option("--json", help="print one JSON document on stdout", callback=json_mode),
]
ModelPath = Annotated[
    Path,
    typer.Option("--model", help="a model file written by `ddnn train` (or a `ddnn export` dir)"),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="a YAML or JSON config (see `ddnn config`)")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config value, e.g. --set train.device_dropout=0.1"),
]


Epochs = Annotated[int | None, typer.Option(min=1, help="training epochs")]
Seed = Annotated[int | None, typer.Option(help="seed of initialization, batches and dropout")]
Split = Annotated[str, typer.Option(help="which part of the data: test, validation, train, all")]
LiveData = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="data SPEC whose test part the devices replay and decisions are scored on; it "
        "must fit the model (default: the data the model was trained on)",
    ),
]
CaptureAccounts = Annotated[
    bool,
    typer.Option(
        "--capture",
        help="the deployment captures hard examples: a `capture` account (`ddnn capture`), "
        "and the devices may send it the frames of hard samples (without it, no device can "
        "publish a frame)",
    ),
]
OptionalData = Annotated[
    str | None,
    typer.Option("--data", help="data SPEC (default: the data the model was trained on)"),
]


def load_data(spec: str, grid: str, quiet: bool) -> MultiViewData:
    """The data `spec` names, with a progress bar while a synthetic set is first generated."""
    n = data_mod.samples_to_generate(spec)
    if n is None:
        return data_mod.load_spec(spec, grid)
    with progress_bar("generating synthetic set", n, quiet) as adv:
        return data_mod.load_spec(spec, grid, progress=lambda done: adv(completed=done))


def parse_devices(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise DDNNError(f"device list must look like 0,3, got {text!r}") from None


def parse_thresholds(text: str | None, exits: list[str]) -> dict[str, float]:
    """`0.8` sets every exit but the last; `local=0.8,edge=0.5` sets the named ones."""
    if text is None:
        return {}
    try:
        if "=" not in text:
            return dict.fromkeys(exits[:-1], float(text))
        pairs = (item.split("=", 1) for item in text.split(","))
        chosen = {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise DDNNError(f"threshold must be a number or name=number pairs, got {text!r}") from None
    unknown = set(chosen) - set(exits[:-1])
    if unknown:
        raise DDNNError(f"no exit {sorted(unknown)} with a threshold; exits: {exits[:-1]}")
    return chosen


def parse_ints(text: str, option: str) -> list[int]:
    """A comma-separated list of integers, in the order given (`option` names the flag in
    the error)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DDNNError(f"{option} takes comma-separated whole numbers, got {text!r}") from None


def config_from(
    config: Path | None,
    overrides: list[str] | None,
    data: MultiViewData | None = None,
    base: DDNNConfig | None = None,
    **flags: Any,
) -> DDNNConfig:
    """The config file (or the defaults, or `base`) with the --set overrides and the train.*
    flags given; fitted to `data` (its classes, devices and view shape) when there is one."""
    extra = [f"train.{k}={v}" for k, v in flags.items() if v is not None]
    if data is None:
        return load_config(config, [*(overrides or []), *extra], base=base)
    try:
        settings = data.model_settings()
        return load_config(config, [*(overrides or []), *extra], settings, data.name, base)
    except FittedSettingError:
        raise  # it names the data already
    except ConfigError as e:
        raise ConfigError(
            f"{e} (fitted to {data.name}: {data.n_views} views, a device each)"
        ) from None


BrokerKindOption = Annotated[
    str,
    typer.Option(
        "--kind",
        help="auto (mosquitto if installed, else the embedded rumqttd, or the embedded amqtt "
        "where topic grants must hold), mosquitto, rumqttd or amqtt",
    ),
]
