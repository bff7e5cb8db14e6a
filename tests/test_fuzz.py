"""Property-based fuzz over the *valid* message space (issue 27), in-process: what a valid
account can say within the schema passes every check, so only the services' own logic stands
between it and a dead service or a wrong decision. The strategies (tests/fuzzing.py) come
from the pydantic models of ddnn/live/wire.py (their `Field` bounds) and press on the limits:
ints near 2^63, floats at their bounds, capture times either side of the skew, scores at the
bounds, every role of the deployment and roles it lacks, containers empty and full. Each
message goes out from every account whose grants allow its topic, into every service on the
in-memory bus, between real samples. Nothing may escape a service, none may count
`INTERNAL_ERROR`, everything on the bus decodes, and each real sample is decided exactly
once. Default run: 100 of each kind per deployment; `-m slow`: 2,000 on each of six (one of
them capturing hard examples), 12,000 of each kind in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aggregator.awaited import SILENT_AFTER
from aggregator.service import AggregatorService
from capture.folder import CaptureFolder
from capture.service import CaptureService
from cloud.service import TierService
from ddnn.core.hard import HardRule
from ddnn.core.roles import MAX_INDEX, Role, deployment_roles
from ddnn.live.access import grants
from ddnn.live.service import INTERNAL_ERROR
from ddnn.live.wire import CHANNELS, KINDS, Message, Offload, Tick, decode, encode
from devices.service import DeviceService
from tests.fuzzing import REAL_BASE, Fuzz
from tests.inprocess import DEPLOYMENT, LATER, whole_rig

FEW, MANY = 100, 2_000  # messages of each kind per deployment: default run, `-m slow`
# Seconds past now at which services are polled: before every deadline, past the devices'
# scores (1 s), an edge's (2 s), the cloud's (3 s) and a job's resend (0.5 s), and past all.
LATERS = [0.0, 0.6, 1.1, 2.1, 3.1, LATER]


# -- the deployment --------------------------------------------------------------------------
def deploy(
    name: str, artifacts: Path, replicas: int | None = None, capture: Path | None = None
) -> Fuzz:
    """Every service of `artifacts` on one bus, and what the fuzz needs to know of them;
    `capture`: the deployment captures hard examples into this folder (capturing devices,
    and the capture service)."""
    rig = whole_rig(artifacts, replicas, HardRule() if capture else None)
    model = rig.manifest.ddnn_config().model
    if capture is not None:
        folder = CaptureFolder(capture, model.n_devices)
        rig.add(CaptureService(rig.manifest, rig.bus, DEPLOYMENT, folder, HardRule()))
    [agg] = [s for s in rig.services if isinstance(s, AggregatorService)]
    devices = [s for s in rig.services if isinstance(s, DeviceService)]
    tiers = [s for s in rig.services if isinstance(s, TierService)]
    instance = {str(s.role): s.instance for s in rig.services}
    routes: dict[str, list[tuple[str, str, str | None]]] = {k: [] for k in KINDS}
    anywhere = []
    for account, grant in grants(model, rig.topics, capture=capture is not None).items():
        for topic in grant.write:
            topic = topic.replace("#", instance.get(account, "fuzz"))  # a probe's topic
            anywhere.append((account, topic))
            level, _, role = topic.removeprefix(rig.topics.root + "/").partition("/")
            if (kind := CHANNELS.get(level)) is not None:
                # the topic's last level: its sender's role, or the tier an offload asks
                named = None if not role else role if kind is Offload else Role(role)
                routes[kind.model_fields["kind"].default].append((account, topic, named))
    n_edges = len(model.edge.groups) if model.edge is not None else 0
    strangers = [Role.device(model.n_devices), Role.device(4095), Role.device(MAX_INDEX)]
    strangers += [Role.edge(n_edges), Role.edge(4095), Role.edge(MAX_INDEX)]
    shapes, encodings = {}, {}
    for t in tiers:
        for r in t.inputs:
            shapes[str(r)], encodings[str(r)] = tuple(t.input_shape), t.input_encoding
    fz = Fuzz(
        name=name,
        rig=rig,
        aggregator=agg,
        devices=devices,
        tiers=tiers,
        roles=[*deployment_roles(model), *strangers],
        routes=routes,
        anywhere=anywhere,
        shapes=shapes,
        encodings=encodings,
        cloud_encoding=agg.job_maps.encoding,
        classes=len(model.classes),
        bounds=agg.bounds,
    )
    watch_decisions(fz)
    settle(fz, 0.0)
    return fz


def watch_decisions(fz: Fuzz) -> None:
    """Keep every decision the aggregator itself publishes, by sample: the decisions topic
    also carries the forged ones the fuzz sends as the aggregator's account."""
    client = fz.aggregator.client
    send: Callable[..., Any] = client.send
    decisions = fz.rig.topics.decisions

    def recording(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        if topic == decisions:
            fz.decided[decode(payload).sample].append(payload)
        return send(topic, payload, qos, retain)

    client.send = recording  # type: ignore[method-assign]


def settle(fz: Fuzz, later: float) -> None:
    """Deliver until every inbox is empty, poll every service `later` seconds from now, and
    deliver what that caused; devices say online again once the aggregator counted them
    silent. Nothing is caught: an exception out of receive or poll fails the test."""
    drain(fz)
    now = time.monotonic() + later
    for s in fz.services:
        s.poll(now)
    drain(fz)
    if later > SILENT_AFTER:
        for d in fz.devices:
            d.announce("online")
        drain(fz)


def drain(fz: Fuzz) -> None:
    """Hand every service its inbox until all are empty; every payload on the bus must
    decode (the probe sees them all, the fuzz's and the services')."""
    moved = True
    while moved:
        moved = False
        for s in fz.services:
            while (item := s.client.get(0)) is not None:
                s.receive(*item)
                moved = True
    while (item := fz.rig.probe.get(0)) is not None:
        topic, payload = item
        if payload or not topic.startswith(fz.rig.topics.hello):  # (catch_up's empty probe)
            decode(payload)  # raises WireError on anything a reader would refuse


def internal_errors(fz: Fuzz) -> dict[str, int]:
    """Each service's count of errors it survived: a bug each (ddnn/live/service.py)."""
    return {s.instance: s.rejected[INTERNAL_ERROR] for s in fz.services}


def tick_real(fz: Fuzz) -> None:
    """A real sample, as the trigger ticks it."""
    fz.real.append(REAL_BASE + len(fz.real))
    fz.rig.send(Tick(sample=fz.real[-1], t=time.time()))


def run_fuzz(fz: Fuzz, examples: int) -> None:
    """`examples` rounds of one delivery of every kind, in any order, with a real sample
    ticked among them, then a settle with deadlines passing or not."""
    batches = st.tuples(*(fz.delivery(kind) for kind in KINDS)).flatmap(
        lambda t: st.permutations(list(t))
    )

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=batches, real_at=st.integers(0, len(KINDS)), later=st.sampled_from(LATERS))
    def one(batch: list[tuple[str, str, Message]], real_at: int, later: float) -> None:
        before = internal_errors(fz)
        for i, (_account, topic, message) in enumerate(batch):
            if i == real_at:
                tick_real(fz)
            fz.rig.send_raw(topic, encode(message))
            fz.counts[message.kind] += 1
            fz.stray[message.kind] += CHANNELS.get(level_of(fz, topic)) is not type(message)
        if real_at == len(batch):
            tick_real(fz)
        settle(fz, later)
        assert internal_errors(fz) == before, [s.rejected for s in fz.services]

    one()


def level_of(fz: Fuzz, topic: str) -> str:
    """The first topic level under the deployment's root, which names the kind it carries."""
    return topic.removeprefix(fz.rig.topics.root + "/").partition("/")[0]


def finish(fz: Fuzz) -> None:
    """Let every deadline pass, check the decisions, close every service, check again."""
    settle(fz, LATER)
    settle(fz, LATER)
    for s in fz.services:
        s.close()
    drain(fz)
    for sample, payloads in fz.decided.items():
        assert len(set(payloads)) == 1, f"sample {sample}: {len(set(payloads))} decisions"
    for sample in fz.real:
        assert len(fz.decided.get(sample, [])) == 1, f"real sample {sample}"
    for s in fz.services:
        assert s.rejected[INTERNAL_ERROR] == 0, (s.role, s.rejected)
    answered = sum(decode(fz.decided[s][0]).decided for s in fz.real)
    assert answered >= len(fz.real) // 2, f"{answered} of {len(fz.real)} real samples decided"


DEPLOYMENTS = {  # name -> (fixture, cloud replicas, whether it captures hard examples)
    "plain": ("plain", None, False),
    "edges": ("with_edges", None, False),
    "plain-replicated": ("plain", 2, False),
    "edges-replicated": ("with_edges", 2, False),
    "hybrid": ("with_hybrid", None, False),
    "edges-capture": ("with_edges", None, True),
}
DEFAULT = ["plain", "edges", "plain-replicated", "edges-capture"]


@pytest.mark.parametrize(
    ("deployment", "examples"),
    [(d, FEW) for d in DEFAULT]
    + [pytest.param(d, MANY, marks=pytest.mark.slow) for d in DEPLOYMENTS],
)
def test_valid_messages_from_every_account_break_no_service(
    request, tmp_path, deployment, examples
):
    fixture, replicas, capture = DEPLOYMENTS[deployment]
    fz = deploy(
        deployment, request.getfixturevalue(fixture), replicas, tmp_path if capture else None
    )
    started = time.monotonic()
    run_fuzz(fz, examples)
    finish(fz)
    assert all(fz.counts[kind] >= examples for kind in KINDS), fz.counts
    print(
        f"\n{deployment}: {dict(fz.counts)} sent ({dict(fz.stray)} on another kind's topic), "
        f"{len(fz.real)} real samples, {fz.invalid} invalid draws, "
        f"{time.monotonic() - started:.1f} s"
    )
