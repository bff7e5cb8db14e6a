"""One deployment on this machine, as `ddnn demo` and `ddnn faults` (and the tests) run it.

`prepare(...)` exports a trained model into per-role artifacts, writes the deployment's
broker accounts (ddnn/live/access.py) and checks that the data the devices are to replay fits
the model (the offline `Reference` of the same samples). The caller then starts a broker
that enforces those accounts (or uses its own), and `deployment(...)` starts one process per
role against it (as an operator would: `python -m ddnn <role> ...`, each logging in with its
own account), every device replaying the test part of that data, connects a driver (the
`trigger` account) and waits until every service is online; on leaving, it stops the
processes and keeps their exit codes. A deployment prepared with `capture` may also run the
opt-in capture of hard examples (`Capturing`): `ddnn capture` beside the others, and every
device with `--capture`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ddnn.core.config import DDNNConfig, ModelConfig
from ddnn.core.errors import DDNNError
from ddnn.core.hard import DEFAULT_ENTROPY, HardRule
from ddnn.core.manifest import Manifest
from ddnn.core.roles import AGGREGATOR, CAPTURE, CLOUD, Role, deployment_roles
from ddnn.live.access import TRIGGER, login, write_access
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service import STATUS_EVERY
from ddnn.live.wire import Decision, Topics
from ddnn.nn.export import export
from ddnn.nn.model import DDNN
from ddnn.ops.fleet import Driver, Fleet, Launch, Reference, on_wall_clock, replaying


@dataclass
class Prepared:
    """An export with the accounts of one deployment of it, and the data its devices replay."""

    name: str  # the deployment
    artifacts: Path
    manifest: Manifest
    access: Path  # the accounts' files, for the broker
    reference: Reference  # offline decisions on the data the devices replay
    capture: bool = False  # whether its accounts let it capture hard examples


def prepare(
    model: DDNN,
    cfg: DDNNConfig,
    meta: dict[str, Any],
    workdir: Path,
    name: str,
    data: str | None = None,
    camera: bool = False,
    capture: bool = False,
) -> Prepared:
    """Export `model` into `workdir`/artifacts, with accounts for deployment `name`; `data`
    is the SPEC the devices will replay (default: the data the model was trained on), refused
    here, before anything starts, when it does not fit the model; `camera`: they replay it
    as uint8 frames (`Reference`); `capture`: the accounts let it capture hard examples."""
    artifacts = workdir / "artifacts"
    manifest = export(model, cfg, artifacts, meta)
    access = write_access(artifacts, cfg.model, name, manifest.model_version, capture)
    reference = Reference(artifacts, data, camera)
    return Prepared(name, artifacts, manifest, access, reference, capture)


def prepare_sites(
    model: DDNN,
    cfg: DDNNConfig,
    meta: dict[str, Any],
    workdir: Path,
    names: list[str],
    data: str | None = None,
) -> list[Prepared]:
    """`prepare` for several deployments (sites) of one export: each with its own accounts,
    all with the same artifacts and offline reference."""
    first = prepare(model, cfg, meta, workdir, names[0], data)
    version = first.manifest.model_version
    return [first] + [
        replace(first, name=name, access=write_access(first.artifacts, cfg.model, name, version))
        for name in names[1:]
    ]


# seconds for the capture to settle: its wait for frames, and two statuses after it
SETTLE_CAPTURE = 5.0 + 2 * STATUS_EVERY


@dataclass(frozen=True)
class Capturing:
    """The capture of hard examples into the folder `out` at the entropy level `entropy`
    (the devices' and the capture service's alike); `options`: more of `ddnn capture`'s
    (`--quota-mb`, `--rate`, `--wait`)."""

    out: Path
    entropy: float = DEFAULT_ENTROPY
    options: tuple[str, ...] = ()

    def of(self, roles: list[Role]) -> dict[Role, list[str]]:
        """The options of each of `roles` and of the capture service (`CAPTURE`)."""
        level = ["--capture-entropy", str(self.entropy)]
        devices = {r: ["--capture", *level] for r in roles if r.tier == "device"}
        service = ["--out", str(self.out), "--entropy", str(self.entropy), *self.options]
        return devices | {CAPTURE: service}

    def hard(self, decisions: Iterable[Decision], model: ModelConfig) -> int:
        """How many of `decisions` (of a deployment of `model`) the rule calls hard."""
        rule = HardRule(self.entropy)
        return sum(d.is_hard(rule, model) for d in decisions)

    def settle(self, driver: Driver, hard: int, timeout: float = SETTLE_CAPTURE) -> bool:
        """Wait until the status of every capture service online says it took in `hard` hard
        decisions and has none waiting for frames (written or dropped, each counted), so
        that stopping the deployment cuts no capture short; whether it did before `timeout`
        seconds passed with no progress (a busy machine's capture catches up slowly, but it
        catches up)."""
        end, seen = time.monotonic() + timeout, None
        while time.monotonic() < end:
            online = [
                s.counters
                for s in driver.instances.values()
                if s.role == CAPTURE and s.state == "online"
            ]
            if online and all(c.get("hard", -1) >= hard and c.get("waiting") == 0 for c in online):
                return True
            progress = sorted((c.get("hard", -1), c.get("waiting")) for c in online)
            if progress != seen:
                end, seen = time.monotonic() + timeout, progress
            driver.pump(0.1)
        return False


@dataclass
class Deployment:
    artifacts: Path  # the export the services run
    manifest: Manifest
    reference: Reference  # offline decisions on the data the devices replay
    roles: list[Role]
    processes: list[str]  # the fleet's names of their processes (cloud replicas: several)
    fleet: Fleet
    driver: Driver
    codes: dict[str, int | None] = field(default_factory=dict)  # exit codes, once stopped


@contextmanager
def deployment(
    prepared: Prepared,
    settings: BrokerSettings,
    workdir: Path,
    *,
    devices: int | None = None,
    extra: dict[Role, list[str]] | None = None,
    log_level: str = "warning",
    retry_after: float = 5.0,
    drain: float = 0.0,
    launch: Launch | None = None,
    cloud_replicas: int = 1,
    fps: float | None = None,
    capture: Capturing | None = None,
) -> Iterator[Deployment]:
    """Run the prepared deployment (the first `devices` devices, all by default; `extra`
    options per role; logs in `workdir`) on the broker of `settings` (no account: each
    process logs in with its own) until the block ends; then stop every process, after
    `drain` seconds of collecting the services' last status messages (with their final
    counters). `cloud_replicas` over 1: the cloud as that many replicas sharing the jobs
    the aggregator gathers (cloud/service.py), which needs an MQTT 5 broker. `fps`: the
    devices free-run on the wall clock at that rate (`on_wall_clock`) instead of being
    ticked. `capture`: the capture of hard examples runs too (prepared with `capture`)."""
    artifacts, manifest, name = prepared.artifacts, prepared.manifest, prepared.name
    common = ["--artifacts", str(artifacts), "--broker", settings.url]
    common += ["--mqtt", settings.protocol, "--deployment", name, "--log-level", log_level]
    common += ["--quick-ack"] if settings.quick_ack else []
    roles = deployment_roles(manifest.ddnn_config().model, devices)
    options = replaying(roles, prepared.reference.spec)
    replicas = {CLOUD: cloud_replicas} if cloud_replicas > 1 else {}
    if replicas:
        if CLOUD not in roles or settings.protocol != "5":
            raise DDNNError("cloud replicas need a model with a cloud and an MQTT 5 broker")
        options[CLOUD] = ["--group", "cloud"]
        options[AGGREGATOR] = ["--replicated-cloud"]
    capturing: dict[Role, list[str]] = {}
    if capture is not None:
        if not prepared.capture:
            raise DDNNError("capturing hard examples needs the accounts of `prepare(capture=True)`")
        capturing = capture.of(roles)
        roles = [*roles, CAPTURE]
    for more in (on_wall_clock(roles, fps) if fps is not None else {}, capturing, extra or {}):
        for role, values in more.items():
            options[role] = [*options.get(role, []), *values]
    fleet = Fleet(common, workdir, options, launch)
    driver: Driver | None = None
    running: Deployment | None = None
    try:
        processes = [
            fleet.start(role, replica) for role in roles for replica in range(replicas.get(role, 1))
        ]
        topics = Topics(name, manifest.model_version)
        driver = Driver(login(settings, prepared.access, TRIGGER), topics, fleet, retry_after)
        driver.wait_online(roles, replicas=replicas)
        running = Deployment(
            artifacts, manifest, prepared.reference, roles, processes, fleet, driver
        )
        yield running
    finally:
        codes = fleet.stop()
        if running is not None:
            running.codes = codes
        if driver is not None:
            end = time.monotonic() + drain
            while time.monotonic() < end:
                driver.pump(0.1)
            driver.close()
