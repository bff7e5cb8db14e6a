"""One deployment on this machine, as `ddnn demo` and `ddnn faults` (and the tests) run it.

`deployment(...)` exports a trained model into per-role artifacts, checks that the data the
devices are to replay fits the model (the offline `Reference` of the same samples), starts one
process per role against a broker (as an operator would: `python -m ddnn <role> ...`), every
device replaying the test part of that data, connects a driver and waits until every service
is online; on leaving, it stops the processes and keeps their exit codes. The broker is the
caller's: the demo may use an external one, fault injection restarts its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddnn.core.config import DDNNConfig
from ddnn.core.manifest import Manifest
from ddnn.core.roles import Role, deployment_roles
from ddnn.live.mqtt import BrokerSettings
from ddnn.live.wire import Topics
from ddnn.nn.export import export
from ddnn.nn.model import DDNN
from ddnn.ops.fleet import Driver, Fleet, Launch, Reference, replaying


@dataclass
class Deployment:
    artifacts: Path  # the export the services run
    manifest: Manifest
    reference: Reference  # offline decisions on the data the devices replay
    roles: list[Role]
    fleet: Fleet
    driver: Driver
    codes: dict[Role, int | None] = field(default_factory=dict)  # exit codes, once stopped


@contextmanager
def deployment(
    model: DDNN,
    cfg: DDNNConfig,
    meta: dict[str, Any],
    workdir: Path,
    settings: BrokerSettings,
    name: str,
    *,
    devices: int | None = None,
    data: str | None = None,
    extra: dict[Role, list[str]] | None = None,
    log_level: str = "warning",
    retry_after: float = 5.0,
    drain: float = 0.0,
    launch: Launch | None = None,
) -> Iterator[Deployment]:
    """Export `model` into `workdir`/artifacts and run deployment `name` of it (the first
    `devices` devices, all by default, replaying the test part of `data`, a SPEC that must
    fit the model, by default the data it was trained on; `extra` options per role; logs in
    `workdir`) until the block ends; then stop every process, after `drain` seconds of
    collecting the services' last status messages (with their final counters)."""
    artifacts = workdir / "artifacts"
    manifest = export(model, cfg, artifacts, meta)
    reference = Reference(artifacts, data)  # checks that the data fits, before any start
    common = ["--artifacts", str(artifacts), "--broker", settings.url]
    common += ["--mqtt", settings.protocol, "--deployment", name, "--log-level", log_level]
    roles = deployment_roles(cfg.model, devices)
    options = replaying(roles, reference.spec)
    for role, more in (extra or {}).items():
        options[role] = [*options.get(role, []), *more]
    fleet = Fleet(common, workdir, options, launch)
    driver: Driver | None = None
    running: Deployment | None = None
    try:
        for role in roles:
            fleet.start(role)
        driver = Driver(settings, Topics(name, manifest.model_version), fleet, retry_after)
        driver.wait_online(roles)
        running = Deployment(artifacts, manifest, reference, roles, fleet, driver)
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
