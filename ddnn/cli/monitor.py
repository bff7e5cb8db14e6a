"""`ddnn monitor`: a running deployment at a glance, from what its services publish.

The folding of statuses and decisions into one picture is `ddnn.ops.monitor` (no I/O to
speak of, no PyTorch); this module finds the broker, the account and the model version,
and draws the picture as a rich `Live` dashboard, or prints it once as JSON.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ddnn.cli.app import app
from ddnn.cli.options import JsonFlag
from ddnn.cli.render import out, show
from ddnn.core.errors import ConfigError
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import Role, deployment_roles
from ddnn.live.access import OBSERVER, read_credentials
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service_cli import ServiceSetup, service_command
from ddnn.ops.monitor import SNAPSHOT_KEYS, Monitor, open_client, watch

JSON_SECONDS = 3.0  # what `--json` listens for by default
REFRESH = 1.0  # seconds between redraws of the dashboard
STYLES = {"online": "green", "offline": "red", "silent": "yellow", "unseen": "dim"}

HELP = (
    "Watch a running deployment: every service online or offline (and since when), "
    "decisions per second, exit fractions and latency p50/p99 per tier and bytes per "
    "device per sample over the last --window seconds, degraded and undecided decisions "
    "with their reasons, and each service's rejections by reason. It reads only the "
    "services' retained statuses and the decisions, as the read-only `observer` account "
    "may, and publishes nothing. Its credentials: --credentials (the observer.json of "
    "`ddnn export` / `ddnn credentials`), else --username/--password, else the observer's "
    "file in --artifacts for --deployment, else anonymous. The model version of the topics "
    "comes from --artifacts, --credentials or --model-version; with none of them (an "
    "anonymous broker) every version of the deployment is watched.\n\n"
    "--json listens for --seconds (default 3), prints one JSON document and exits. Its keys: "
    + "; ".join(f"{key}: {text}" for key, text in SNAPSHOT_KEYS.items())
    + "."
)


def target(
    setup: ServiceSetup, artifacts: Path | None, model_version: str | None
) -> tuple[BrokerSettings, str | None, list[Role]]:
    """The observer's broker settings, the model version to watch (None: all) and the roles
    expected (those of --artifacts' model; none without it)."""
    versions: dict[str, str] = {}
    roles: list[Role] = []
    if artifacts is not None:
        manifest = read_manifest(artifacts)
        versions["--artifacts"] = manifest.model_version
        roles = deployment_roles(manifest.ddnn_config().model)
    if setup.credentials is not None:
        versions["--credentials"] = read_credentials(setup.credentials).model_version
    if model_version is not None:
        versions["--model-version"] = model_version
    if len(set(versions.values())) > 1:
        said = ", ".join(f"{option} {version}" for option, version in versions.items())
        raise ConfigError(f"model versions disagree: {said}")
    version = next(iter(versions.values()), None)
    return setup.login(artifacts, OBSERVER, version or ""), version, roles


@service_command
def monitor(
    setup: ServiceSetup,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="a `ddnn export` directory: its model version, its roles (shown as unseen "
            "until heard) and, by default, its observer credentials for --deployment"
        ),
    ] = None,
    model_version: Annotated[
        str | None,
        typer.Option(help="the model version whose topics to watch (default: see above)"),
    ] = None,
    window: Annotated[
        float,
        typer.Option(min=1, max=3600, help="seconds of decisions the figures cover"),
    ] = 10.0,
    seconds: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help=f"listen this long, then show the picture and exit (default: {JSON_SECONDS:g} "
            "s with --json, else until Ctrl-C)",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    settings, version, roles = target(setup, artifacts, model_version)
    watcher = Monitor(setup.deployment, version, window, roles, broker=settings.url)
    client = open_client(settings, watcher)
    try:
        if as_json:
            show(watch(client, watcher, seconds or JSON_SECONDS), as_json=True)
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        with Live(dashboard(watcher.snapshot()), console=out, auto_refresh=False) as live:
            last = watch(
                client,
                watcher,
                seconds,
                every=REFRESH,
                show=lambda snapshot: live.update(dashboard(snapshot), refresh=True),
                stop=stop.is_set,
            )
            live.update(dashboard(last), refresh=True)
    finally:
        client.close()


app.command("monitor", help=HELP)(monitor)


# -- the dashboard ---------------------------------------------------------------------------
def dashboard(snap: dict[str, Any]) -> RenderableType:
    """The snapshot as a person reads it: a headline, the services, the decisions' figures,
    and whatever was refused, degraded or undecided."""
    d = snap["decisions"]
    versions = ", ".join(snap["model_versions"]) or "no model version heard yet"
    head = (
        f"deployment {snap['deployment']} ({versions}) on {snap['broker']}: listening "
        f"{snap['listened_s']:.0f} s; figures over the last {snap['window_s']:g} s"
    )
    parts: list[RenderableType] = [Text(head, style="bold"), services_table(snap["services"])]
    parts.append(decisions_table(d))
    bytes_ = d["bytes_per_device_per_sample"]
    parts.append(
        Text(
            f"{d['count']} decisions ({_number(d['per_second'])}/s"
            + (", more than kept: rate over the newest" if d["capped"] else "")
            + f"), {d['total']} since start; bytes per device per sample {_number(bytes_)}; "
            f"degraded {d['degraded']}, undecided {d['undecided']}, abstained {d['abstained']}; "
            f"since start, delivered again {d['decisions_repeated']}, "
            f"decided twice {d['decisions_twice']}"
        )
    )
    reasons = [
        [kind, reason, n] for kind, counts in d["reasons"].items() for reason, n in counts.items()
    ]
    rejected = [
        [role, reason, n]
        for role, view in snap["services"].items()
        for reason, n in view["rejected"].items()
    ]
    malformed = [[reason, n] for reason, n in snap["malformed"].items()]
    if snap["dropped"]:
        malformed.append(["dropped by the client, its inbox full", snap["dropped"]])
    for title, columns, rows in (
        ("degraded and undecided decisions", ["decision", "reason", "n"], reasons),
        ("messages rejected by the services", ["service", "reason", "n"], rejected),
        ("messages the monitor could not use", ["reason", "n"], malformed),
    ):
        if rows:
            parts.append(table(title, columns, rows, left=len(columns) - 1))
    return Group(*parts)


def services_table(services: dict[str, dict[str, Any]]) -> Group:
    rows = []
    for role, view in services.items():
        state = Text(view["state"], style=STYLES.get(view["state"], ""))
        rows.append(
            [
                role,
                state,
                _since(view["since"]),
                _number(view["age_s"]),
                view["instances"],
                view["counters"].get("received"),
                sum(view["rejected"].values()),
            ]
        )
    columns = ["service", "state", "since", "status age s", "processes", "received"]
    return table("services", [*columns, "rejected"], rows, left=3)


def decisions_table(d: dict[str, Any]) -> Group:
    rows = [
        [
            tier,
            _number(100 * fraction),
            _number(d["latency_ms"][tier]["p50"]),
            _number(d["latency_ms"][tier]["p99"]),
        ]
        for tier, fraction in d["exit_fraction"].items()
    ]
    return table("exits", ["tier", "exit %", "p50 ms", "p99 ms"], rows)


def table(title: str, columns: list[str], rows: list[list[Any]], left: int = 1) -> Group:
    """A titled table, its first `left` columns text, the others numbers. Its cells are plain
    text: a reason a hostile publisher wrote is shown as written, never read as rich markup."""
    shown = Table()
    for i, column in enumerate(columns):
        shown.add_column(column, justify="left" if i < left else "right")
    for row in rows:
        shown.add_row(
            *(c if isinstance(c, Text) else Text("-" if c is None else str(c)) for c in row)
        )
    return Group(Text(title, style="bold"), shown)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _since(when: float | None) -> str:
    if when is None:
        return "before start"
    ago = max(0.0, time.time() - when)
    return f"{datetime.fromtimestamp(when):%H:%M:%S} ({ago:.0f} s ago)"
