"""Hostile input into every service, in-process: nothing kills a service, refusals are
counted under a bounded set of reasons, and the service still works afterwards.

Structured fuzzing (hypothesis) starts from a valid message of each kind and replaces or
drops its fields with values of any type (NaN, +-3.4e38, huge integers, nested maps, bytes of
any length); raw fuzzing sends arbitrary bytes. Each payload goes to each service on the
topic its kind belongs on, so that it passes the topic check and reaches the handler. A
message that makes a handler raise counts as `INTERNAL_ERROR` ("an error the service
survived"): the tests demand none. The default run sends a hundred of each; `-m slow` sends 10,000.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.service import TierService
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import CLOUD, Role
from ddnn.live.service import INTERNAL_ERROR, MAX_REASONS, Service
from ddnn.live.wire import Decision, Features, Job, Message, Offload, Status, Tick, encode
from tests.inprocess import (
    SURE,
    UNSURE,
    Rig,
    aggregator_rig,
    cloud_rig,
    device_rig,
    scores,
    tier_service,
)

FEW, MANY = 100, 10_000

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([3.4e38, -3.4e38, 1e308, -0.0]),
    st.text(max_size=24),
    st.binary(max_size=64),
    st.sampled_from(["device-0", "device-5", "device-6", "edge-0", "cloud", "aggregator"]),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
float32s = st.lists(
    st.floats(width=32, allow_nan=True, allow_infinity=True) | st.sampled_from([3.4e38, -3.4e38]),
    max_size=6,
).map(lambda values: np.array(values, dtype="<f4").tobytes())


def mutations(valid: dict) -> st.SearchStrategy[dict]:
    """`valid` with each field kept or replaced by anything (float32 arrays for the byte
    fields), some fields dropped, and maybe one field added."""
    fields = {
        k: st.one_of(st.just(v), float32s if isinstance(v, bytes) else anything, anything)
        for k, v in valid.items()
    }
    return st.tuples(
        st.fixed_dictionaries(fields),
        st.sets(st.sampled_from(sorted(valid))),
        st.dictionaries(st.text(max_size=6), anything, max_size=1),
    ).map(lambda t: {**{k: v for k, v in t[0].items() if k not in t[1]}, **t[2]})


def valid_messages(fmap_shape: tuple[int, ...]) -> list[Message]:
    """A valid message of every kind, each from device 1 where it has a sender."""
    fmap = np.ones(fmap_shape, dtype=np.float32)
    now = time.time()
    return [
        Status(role=Role.device(1), state="online", t=now),
        Tick(sample=3, t=now),
        scores(3, Role.device(1), SURE),
        Offload(sample=3, sources=[Role.device(1)], to="cloud"),
        Features.of(3, Role.device(1), fmap, "binary"),
        Job.of(3, now, [Features.of(3, Role.device(d), fmap, "binary") for d in (1, 2)]),
        Decision(sample=3, decided=True, class_index=0, exit="local"),
    ]


def fuzz(under_test: list[tuple[Rig, Service]], fmap_shape: tuple[int, ...], n: int) -> None:
    """`n` structured payloads of every kind, and `n // 10` raw ones, into every service
    (each on its own rig), on the kind's topic: each payload, once made, goes to all."""
    rig = under_test[0][0]  # every rig has the same deployment topics
    for valid in valid_messages(fmap_shape):
        topic = rig.topic_of(valid)
        packed = mutations(valid.model_dump()).map(lambda m: msgpack.packb(m, use_bin_type=True))
        send_all(under_test, topic, packed, n)
        send_all(under_test, topic, st.binary(max_size=256), max(1, n // 10))
        for r, _ in under_test:
            r.settle()  # what the services published in answer goes its way
    for _, service in under_test:
        assert service.rejected[INTERNAL_ERROR] == 0, service.rejected
        assert len(service.rejected) <= MAX_REASONS


def send_all(
    under_test: list[tuple[Rig, Service]],
    topic: str,
    payloads: st.SearchStrategy[bytes],
    examples: int,
) -> None:
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(payload=payloads)
    def one(payload: bytes) -> None:
        for _, service in under_test:
            service.receive(topic, payload)

    one()


def edge_rig(artifacts: Path) -> tuple[Rig, TierService]:
    rig = Rig(read_manifest(artifacts))
    edge = tier_service(rig, artifacts, Role.edge(0))
    rig.add(edge)
    return rig, edge


def still_decides(rig: Rig, sample: int) -> None:
    """The aggregator of `rig` decides a good sample after all that."""
    rig.send(Tick(sample=sample, t=time.time()))
    for d in range(6):
        rig.send(scores(sample, Role.device(d), SURE))
    rig.settle()
    assert sample in {d.sample for d in rig.decisions()}


@pytest.mark.parametrize("examples", [FEW, pytest.param(MANY, marks=pytest.mark.slow)])
def test_fuzzed_messages_kill_no_service_and_grow_no_reason_list(plain, with_edges, examples):
    cloud_at, cloud = cloud_rig(plain)
    agg_at, agg = aggregator_rig(plain)
    device_at, device = device_rig(plain)
    edge_at, edge = edge_rig(with_edges)
    replica_at, replica = cloud_rig(plain, group="cloud")
    gatherer_at, gatherer = aggregator_rig(plain, replicated_cloud=True)
    gatherer_at.send(Tick(sample=3, t=time.time()))  # gathering maps for the fuzzed sample 3
    for d in range(6):
        gatherer_at.send(scores(3, Role.device(d), UNSURE))
    gatherer_at.settle()
    under_test = [(cloud_at, cloud), (agg_at, agg), (device_at, device), (edge_at, edge)]
    under_test += [(replica_at, replica), (gatherer_at, gatherer)]
    fuzz(under_test, cloud.input_shape, examples)  # a device's feature map
    for d in range(6):
        agg_at.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    still_decides(agg_at, 10**6)  # whatever sample ids the fuzzed ticks opened
    for d in range(6):
        gatherer_at.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    still_decides(gatherer_at, 10**6)
    assert replica.counters["samples"] >= 1  # the valid jobs among the fuzzed ones
    device_at.send(Tick(sample=10**6, t=time.time()))
    device_at.settle()
    assert device.counters["frames"] >= 1


def test_retained_poison_on_every_status_topic_never_stops_a_service_starting(plain):
    """A poisoned retained status (an unhashable kind, a map for a kind, not msgpack) is
    delivered to every service that subscribes to statuses, on every start."""
    rig = Rig(read_manifest(plain))
    poisons = [
        msgpack.packb({"v": 1, "kind": [1]}),
        msgpack.packb({"v": 1, "kind": {"a": 1}}),
        b"\xc1",
        encode(Tick(sample=0, t=0.0)),  # a valid message of another kind
    ]
    roles = [*(Role.device(d) for d in range(6)), CLOUD]
    for role, poison in zip(roles, poisons * 2, strict=False):
        rig.send_raw(rig.topics.status(role), poison, retain=True)
    for restart in range(3):
        rig, agg = aggregator_rig(plain, online=0, bus=rig.bus)
        assert sum(agg.rejected.values()) == len(roles), agg.rejected
        assert agg.rejected[INTERNAL_ERROR] == 0
        for d in range(6):
            rig.send(Status(role=Role.device(d), state="online", t=time.time()))
        still_decides(rig, restart)
        agg.close()
