"""Broker accounts and a broker to try them on: `ddnn credentials` and `ddnn broker`."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer

from ddnn.cli.app import app
from ddnn.cli.options import BrokerKindOption, CaptureAccounts, JsonFlag
from ddnn.cli.render import err, show
from ddnn.core.errors import DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.live.access import access_dir, merge_access, write_access
from ddnn.live.broker.running import TlsFiles
from ddnn.live.broker.start import start_broker
from ddnn.live.mqtt.settings import is_loopback
from ddnn.live.rates import DEFAULT_FRAME_RATE

DeploymentOption = Annotated[
    str, typer.Option(help="the deployment (topics ddnn/<deployment>/<model version>/)")
]


@app.command("credentials")
def credentials_cmd(
    artifacts: Annotated[Path, typer.Option(help="a directory written by `ddnn export`")],
    deployment: DeploymentOption = "default",
    capture: CaptureAccounts = False,
    as_json: JsonFlag = False,
) -> None:
    """Write new broker accounts for one deployment of an export (`ddnn export` makes those of
    deployment "default"): a password file and ACL for the broker, and one credentials file
    per role (mode 0600) for that role's machine alone. Each role may publish only on its own
    topics and read only what its service needs; `trigger` ticks samples, `observer` reads."""
    manifest = read_manifest(artifacts)
    folder = write_access(
        artifacts, manifest.ddnn_config().model, deployment, manifest.model_version, capture
    )
    accounts = sorted(p.stem for p in folder.glob("*.json"))
    document = {
        "access": str(folder),
        "deployment": deployment,
        "accounts": accounts,
        "capture": capture,
    }
    lines = [
        f"accounts of deployment {deployment!r} in {folder}: {', '.join(accounts)}",
        f"start a broker that enforces them: ddnn broker --artifacts {artifacts}"
        + ("" if deployment == "default" else f" --deployment {deployment}"),
    ]
    show(document, as_json, lines)


@app.command("broker")
def broker_cmd(
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="take only the accounts `ddnn export` / `ddnn credentials` wrote into this "
            "export for --deployment, each limited to its role's topics"
        ),
    ] = None,
    deployments: Annotated[
        list[str] | None,
        typer.Option(
            "--deployment",
            metavar="NAME",
            help="the deployment whose accounts it takes; repeat it for several sites on one "
            "broker (default: default)",
        ),
    ] = None,
    anonymous: Annotated[
        bool,
        typer.Option("--anonymous", help="take anyone instead, with any topic (this machine only)"),
    ] = False,
    port: Annotated[int | None, typer.Option(help="port to listen on (default: free)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="speak TLS only (mqtts://) with this certificate (PEM; mosquitto)"),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the --tls-cert's private key")] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            help="keep retained statuses and client sessions in this folder across restarts "
            "(mosquitto; default: nothing on disk)"
        ),
    ] = None,
    kind: BrokerKindOption = "auto",
    insecure_plaintext: Annotated[
        bool,
        typer.Option(
            "--insecure-plaintext",
            help="listen on a --host other machines can reach without TLS (passwords and "
            "messages in clear text: a network you trust only)",
        ),
    ] = False,
    frame_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="samples per second the deployment runs at: amqtt drops a client's QoS 0 "
            "messages beyond 4 a frame per topic before decoding them, as the services do "
            "(0: no limit; mosquitto and rumqttd relay floods at compiled speed)",
        ),
    ] = DEFAULT_FRAME_RATE,
    as_json: JsonFlag = False,
) -> None:
    """Run a local MQTT broker until Ctrl-C or SIGTERM, so that services can be tried with
    nothing installed by hand (mosquitto when present, else a Python broker). It takes only
    the accounts of the deployments (sites) of an export (--artifacts, --deployment), or, on
    this machine alone, anyone (--anonymous)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if (artifacts is None) == (not anonymous):
        raise DDNNError(
            "say who may connect: --artifacts DIR (the accounts of an export, each limited to "
            "its role's topics) or --anonymous (anyone, anything; this machine only)"
        )
    if anonymous and not is_loopback(host):
        raise DDNNError(
            f"refusing to take anonymous clients on {host}: anyone who could reach it could "
            "publish any message as any role. Use --artifacts DIR (per-role accounts), with "
            "--tls-cert and --tls-key (README, Security)"
        )
    folders = []
    for deployment in deployments or ["default"]:
        folder = access_dir(artifacts, deployment) if artifacts is not None else None
        if folder is not None and not folder.is_dir():
            raise DDNNError(
                f"{artifacts} has no accounts for deployment {deployment!r}: "
                f"run `ddnn credentials --artifacts {artifacts} --deployment {deployment}`"
            )
        folders += [folder] if folder is not None else []
    merged = tempfile.TemporaryDirectory(prefix="ddnn-access-")  # several sites' accounts
    access = None if not folders else folders[0]
    if len(folders) > 1:
        access = merge_access(folders, Path(merged.name))
    if (tls_cert is None) != (tls_key is None):
        raise DDNNError("--tls-cert and --tls-key go together")
    tls = None if tls_cert is None or tls_key is None else TlsFiles(tls_cert, tls_key)
    if not is_loopback(host) and tls is None and insecure_plaintext:
        err.print(
            f"WARNING: listening on {host} over plain MQTT: passwords and messages travel in "
            "clear text. Give it --tls-cert and --tls-key on any network you do not trust."
        )
    broker = start_broker(
        port=port,
        host=host,
        kind=kind,
        access=access,
        tls=tls,
        state=state,
        insecure_plaintext=insecure_plaintext,
        frame_rate=frame_rate,
    )
    if state is not None and broker.kind != "mosquitto":
        err.print(
            f"WARNING: the {broker.kind} broker keeps nothing across restarts: --state {state} "
            "is ignored (install mosquitto)"
        )
    try:
        info = {
            "url": broker.url,
            "kind": broker.kind,
            "protocol": broker.protocol,
            "access": str(access) if access is not None else None,
            "enforces_grants": broker.enforces_grants,
            "frame_rate": frame_rate if broker.limits_rate else None,
        }
        who = f"the accounts in {access}" if access is not None else "anonymous clients"
        listening = (
            f"{broker.kind} broker listening on {broker.url} (clients: MQTT {broker.protocol}; "
            f"{who}); Ctrl-C stops it"
        )
        show(info, as_json, [listening])
        while not stop.wait(0.2):
            if not broker.running:
                raise DDNNError(f"the {broker.kind} broker on {broker.url} stopped by itself")
    finally:
        broker.stop()
        merged.cleanup()
    if not as_json:
        err.print("broker stopped")
