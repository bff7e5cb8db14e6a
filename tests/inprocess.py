"""Running services in-process on the in-memory bus, for tests: a `Rig` (bus, services, a
probe that sees every message) and builders of each service from an exported model.

The services are the real ones (the real exported model, the packed device slices, the
cloud's torch layers, the aggregator's NumPy fusion); only the broker is `MemoryBus`, and the
clock of deadlines is whatever `poll(now)` is told. `Rig.settle()` hands every service its
inbox until no message is left, so one call runs a whole exchange.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aggregator.service import AggregatorService, Deadlines
from aggregator.weights import load_exit_weights
from cloud.runtime import open_tier
from cloud.service import TierService
from ddnn.core.hard import HardRule
from ddnn.core.manifest import Manifest, read_manifest
from ddnn.core.payloads import pack_scores
from ddnn.core.roles import CLOUD, Role, tier_inputs
from ddnn.live.memory import MemoryBus
from ddnn.live.service import Service
from ddnn.live.wire import (
    Capture,
    Decision,
    Features,
    Job,
    Message,
    Offload,
    Scores,
    Status,
    Tick,
    Topics,
    WireError,
    decode,
    encode,
)
from devices.runtime import open_slice
from devices.service import DeviceService
from devices.sources import open_device_source

DEPLOYMENT = "inproc"
LATER = 60.0  # seconds: past every deadline of these tests


@dataclass
class Rig:
    """A deployment on a `MemoryBus`: the services under test, and a probe that sees every
    message under the deployment's root (as an operator's `mosquitto_sub -t 'ddnn/#'`)."""

    manifest: Manifest
    bus: MemoryBus = field(default_factory=MemoryBus)
    services: list[Service] = field(default_factory=list)
    seen: list[tuple[str, Message]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.topics = Topics(DEPLOYMENT, self.manifest.model_version)
        self.probe = self.bus.client("probe").connect()
        self.probe.subscribe(f"{self.topics.root}/#")

    def add(self, service: Service) -> Service:
        service.open()
        self.services.append(service)
        return service

    def send(self, message: Message, topic: str | None = None, retain: bool = False) -> None:
        """Publish `message` as a peer would (on its own topic unless `topic` is given)."""
        self.send_raw(topic or self.topic_of(message), encode(message), retain)

    def send_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.bus.publish(topic, payload, retain=retain)

    def topic_of(self, m: Message) -> str:
        t = self.topics
        if isinstance(m, Status):
            return t.status(m.role)
        if isinstance(m, Scores):
            return t.scores(m.source)
        if isinstance(m, Features):
            return t.features(m.source)
        if isinstance(m, Offload):
            return t.offload(m.to)
        if isinstance(m, Capture):
            return t.capture(m.source)
        return {Tick: t.tick, Job: t.job, Decision: t.decisions}[type(m)]

    def settle(self, later: float = 0.0) -> None:
        """Deliver until every inbox is empty, then poll every service `later` seconds from
        now (deadlines that fall before then pass), and deliver what that caused."""
        self._drain()
        for s in self.services:
            s.poll(time.monotonic() + later)
        self._drain()

    def _drain(self) -> None:
        moved = True
        while moved:
            moved = False
            for s in self.services:
                while (item := s.client.get(0)) is not None:
                    s.receive(*item)
                    moved = True
        while (item := self.probe.get(0)) is not None:
            with contextlib.suppress(WireError):  # the garbage a test sent on purpose
                self.seen.append((item[0], decode(item[1])))

    def of(self, kind: type[Message]) -> list:
        return [m for _, m in self.seen if isinstance(m, kind)]

    def decisions(self) -> list[Decision]:
        return self.of(Decision)


def scores(sample: int, source: Role, values: list[float], **kw) -> Scores:
    array = np.asarray(values, dtype=np.float32)
    return Scores(sample=sample, source=source, scores=pack_scores(array), t0=time.time(), **kw)


SURE = [12.0, -12.0, -12.0]  # confident of class 0: leaves at the first exit
UNSURE = [0.0, 0.0, 0.0]  # normalized entropy 1: never leaves early


def aggregator_rig(
    artifacts: Path,
    online: int = 6,
    bus: MemoryBus | None = None,
    replicated_cloud: bool = False,
    **deadlines: float,
) -> tuple[Rig, AggregatorService]:
    """An aggregator (on `bus`, or a new one) after devices 0..online-1 said online;
    `replicated_cloud`: one that gathers jobs for cloud replicas."""
    manifest, weights = load_exit_weights(artifacts)
    rig = Rig(manifest, bus or MemoryBus())
    for d in range(online):
        rig.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    agg = AggregatorService(
        manifest,
        weights,
        rig.bus,
        DEPLOYMENT,
        Deadlines(**deadlines),
        replicated_cloud=replicated_cloud,
    )
    rig.add(agg)
    rig.settle()
    return rig, agg


def device_service(rig: Rig, artifacts: Path, device: int, **kw) -> DeviceService:
    """Device `device` with its packed slice (the torch one where the export has none, as
    `ddnn device` runs it), replaying the model's own test part."""
    runtime = open_slice(artifacts, device)
    source = open_device_source(runtime.manifest, device)
    return DeviceService(runtime.manifest, device, runtime, source, rig.bus, DEPLOYMENT, **kw)


def device_rig(artifacts: Path, device: int = 2, **kw) -> tuple[Rig, DeviceService]:
    rig = Rig(read_manifest(artifacts))
    service = device_service(rig, artifacts, device, **kw)
    rig.add(service)
    return rig, service


def tier_service(rig: Rig, artifacts: Path, role: Role, runtime: str = "auto", **kw) -> TierService:
    """Upper tier `role` of `artifacts` on `rig`'s bus, in `runtime` (auto: its packed form
    where the export holds one, as `ddnn cloud` runs it)."""
    tier = open_tier(artifacts, role, runtime)
    assert tier.manifest is not None
    model = tier.manifest.ddnn_config().model
    if role.tier == "edge":
        kw.setdefault("output_format", model.edge_feature_format)
    return TierService(role, tier, tier_inputs(model, role), rig.bus, DEPLOYMENT, **kw)


def cloud_rig(
    artifacts: Path, deadline: float = 1.0, group: str | None = None, runtime: str = "auto"
) -> tuple[Rig, TierService]:
    """The cloud alone; `group`: as a replica of that shared subscription group."""
    rig = Rig(read_manifest(artifacts))
    cloud = tier_service(rig, artifacts, CLOUD, runtime, deadline=deadline, group=group)
    rig.add(cloud)
    return rig, cloud


def whole_rig(artifacts: Path, replicas: int | None = None, hard: HardRule | None = None) -> Rig:
    """Every service of a deployment of `artifacts`, opened on one bus; `replicas`: that
    many cloud replicas in the shared subscription group "cloud", fed jobs by the
    aggregator, instead of one cloud; `hard`: the devices capture the hard examples of this
    rule (a capture service is the caller's to add)."""
    manifest, weights = load_exit_weights(artifacts)
    model = manifest.ddnn_config().model
    rig = Rig(manifest)
    for d in range(model.n_devices):
        rig.add(device_service(rig, artifacts, d, hard=hard))
    for e in range(len(model.edge.groups) if model.edge is not None else 0):
        rig.add(tier_service(rig, artifacts, Role.edge(e)))
    if model.cloud is not None:
        group = None if replicas is None else "cloud"
        for _ in range(replicas or 1):
            rig.add(tier_service(rig, artifacts, CLOUD, group=group))
    replicated = replicas is not None
    rig.add(AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, replicated_cloud=replicated))
    return rig


def features(sample: int, source: Role, shape: tuple[int, ...], seed: int = 0) -> Features:
    fmap = np.where(np.random.default_rng(seed).random(shape) < 0.5, -1.0, 1.0)
    return Features.of(sample, source, fmap.astype(np.float32), "binary")
