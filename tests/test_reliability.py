"""Exactly once under faults (issue 27), in-process on the in-memory bus: what one message
from a valid account may not do to the aggregator, and what its decision outbox keeps across
a kill. The same promises against real processes and brokers: test_faults.py."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

import aggregator.service
from aggregator.service import FAILED, RESTARTED, AggregatorService
from aggregator.weights import load_exit_weights
from ddnn.core.errors import DDNNError
from ddnn.core.payloads import pack_scores
from ddnn.core.roles import CLOUD, Role
from ddnn.live.memory import MemoryBus
from ddnn.live.service import INTERNAL_ERROR
from ddnn.live.service_cli import BATCH_SECONDS, Durability
from ddnn.live.wire import Decision, Offload, Status, Tick, decode, encode
from tests.inprocess import DEPLOYMENT, LATER, UNSURE, Rig, aggregator_rig, scores

CALM = [3.0, -3.0, -3.0]  # confident of class 0, within any trained model's score range


def raw_decisions(rig: Rig) -> list[bytes]:
    """Every payload on the decisions topic, decodable or not (the Rig's probe drops what
    does not decode)."""
    return [payload for topic, payload in rig.raw if topic == rig.topics.decisions]


@pytest.fixture
def watched(plain):
    """An aggregator rig whose decisions are also kept raw."""
    rig, agg = aggregator_rig(plain)
    watcher = rig.bus.client("raw-watcher").connect()
    watcher.subscribe(rig.topics.decisions)
    rig.raw = []

    def drain() -> None:
        while (item := watcher.get(0)) is not None:
            rig.raw.append(item)

    rig.drain_raw = drain
    return rig, agg


def to_cloud(rig: Rig, sample: int) -> None:
    """Tick `sample` and have every device unsure, so that it goes to the cloud."""
    rig.send(Tick(sample=sample, t=time.time()))
    for d in range(6):
        rig.send(scores(sample, Role.device(d), UNSURE))
    rig.settle()


def test_byte_counts_from_the_cloud_cannot_break_a_decision(watched):
    """Finding 1: sums of the cloud's `received` over 2^64 made msgpack raise in the
    decision, and the aggregator died at the sample's deadline. Each map travels in one
    message, so a count over MAX_PAYLOAD is refused on the wire, and an answer naming
    inputs the cloud does not have is refused whole."""
    rig, agg = watched
    to_cloud(rig, 1)
    assert rig.of(Offload)
    raw = msgpack.packb(
        {
            "v": 1,
            "kind": "scores",
            "sample": 1,
            "source": "cloud",
            "scores": pack_scores(np.asarray(CALM, np.float32)),
            "t0": time.time(),
            "received": {"device-0": 2**63 - 1, "device-1": 2**63 - 1},
        },
        use_bin_type=True,
    )
    rig.send_raw(rig.topics.scores(CLOUD), raw)
    strange = {Role.device(d): 100 for d in range(40)}  # the model has six
    rig.send(scores(1, CLOUD, CALM, received=strange))
    rig.settle(later=LATER)  # the cloud's deadline passes: a degraded answer
    rig.drain_raw()
    [payload] = raw_decisions(rig)
    d = decode(payload)
    assert isinstance(d, Decision) and d.degraded and d.sample == 1
    assert agg.rejected["bad scores message"] == 1
    assert agg.rejected["scores that name inputs the tier does not have"] == 1
    assert INTERNAL_ERROR not in agg.rejected


def test_a_device_time_cannot_make_a_decision_nobody_can_read(watched):
    """Finding 2: a device's `t0` of -1.7e308 made the latency infinite, so every reader
    refused the decision. A capture time must be a recent Unix time."""
    rig, agg = watched
    rig.send(Tick(sample=2, t=time.time()))
    for d in range(5):
        rig.send(scores(2, Role.device(d), CALM))
    for t0 in (-1.7e308, 1e10, time.time() - 3600):
        m = scores(2, Role.device(5), CALM).model_dump()
        rig.send_raw(rig.topics.scores(Role.device(5)), msgpack.packb(m | {"t0": t0}))
    rig.settle(later=LATER)
    rig.drain_raw()
    [payload] = raw_decisions(rig)
    d = decode(payload)
    assert isinstance(d, Decision) and d.decided and d.latency_ms < 60_000
    assert d.devices == [0, 1, 2, 3, 4]
    assert agg.rejected["bad scores message"] == 1  # before 1970
    assert agg.rejected["scores captured too far from now"] == 2


def test_an_error_ends_its_sample_and_the_service_goes_on(watched, monkeypatch):
    """Whatever a step raises (here: the decision's encoding, as msgpack did), the sample
    ends with an explicit decision, the error is counted, the others go on, and a stop still
    says offline."""
    rig, agg = watched
    rig.send(Tick(sample=3, t=time.time()))
    rig.send(Tick(sample=4, t=time.time()))
    real = aggregator.service.encode

    def failing(message):
        if isinstance(message, Decision) and message.sample == 3 and message.reason != FAILED:
            raise OverflowError("Integer value out of range")
        return real(message)

    monkeypatch.setattr(aggregator.service, "encode", failing)
    rig.settle(later=LATER)  # both deadlines pass in one poll: 3 fails, 4 is decided
    rig.drain_raw()
    ended = {d.sample: d for d in map(decode, raw_decisions(rig))}
    assert set(ended) == {3, 4}
    assert not ended[3].decided and ended[3].reason == FAILED
    assert agg.rejected[INTERNAL_ERROR] == 1 and agg.pending == {}
    agg.close()
    rig.settle()
    [status] = [s for s in rig.of(Status) if s.role == Role("aggregator")][-1:]
    assert status.state == "offline"


def test_no_device_fills_the_pending_samples_under_the_wall_clock(plain, monkeypatch):
    """Finding 6 (wall clock): any scores open a sample, so one device could hold every
    pending slot; it gets its share."""
    monkeypatch.setattr(aggregator.service, "MAX_PENDING", 60)
    manifest, weights = load_exit_weights(plain)
    rig = Rig(manifest)
    for d in range(6):
        rig.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    agg = rig.add(AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, clock="wall"))
    for sample in range(100, 150):
        rig.send(scores(sample, Role.device(0), CALM))
    rig.send(scores(500, Role.device(1), CALM))
    rig.settle()
    assert len(agg.pending) == 11  # device 0's share of 60, and device 1's one
    assert agg.rejected["a new sample from a device with its share pending"] == 40


def started(rig: Rig, state: Path, durability: Durability = Durability.none):
    manifest, weights = load_exit_weights(rig.artifacts)
    agg = AggregatorService(
        manifest,
        weights,
        rig.bus,
        DEPLOYMENT,
        ledger=state / "decided.ids",
        durability=durability,
    )
    rig.add(agg)
    rig.settle()
    return agg


def killed(agg: AggregatorService) -> None:
    """What SIGKILL leaves: the files as written so far, the lock released, no goodbye but
    the broker's last will."""
    agg.client.connect()  # (a detached client has no will left to fire)
    agg.client.bus.lose(agg.client)
    agg.state_lock.close()


@pytest.fixture
def rig_on(plain):
    manifest, _ = load_exit_weights(plain)
    rig = Rig(manifest, MemoryBus())
    rig.artifacts = plain
    for d in range(6):
        rig.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    return rig


def test_a_decision_the_broker_never_took_is_published_after_a_kill(rig_on, tmp_path):
    """Finding 3: the ledger said decided before the broker had the decision, so a kill
    lost it for good. The outbox journals it first and publishes it again at the next start;
    a sample open at the kill is ended explicitly, and nothing is decided twice."""
    first = started(rig_on, tmp_path)
    rig_on.send(Tick(sample=10, t=time.time()))
    rig_on.send(Tick(sample=11, t=time.time()))
    rig_on.settle()
    first.client.detach()  # the broker is gone: the aggregator's publishes are dropped
    for d in range(6):
        m = scores(10, Role.device(d), CALM)
        first.receive(rig_on.topics.scores(m.source), encode(m))
    assert 10 in first.decided and rig_on.decisions() == []
    killed(first)
    second = started(rig_on, tmp_path)
    rig_on.settle()
    ended = {d.sample: d for d in rig_on.decisions()}
    assert set(ended) == {10, 11}
    assert ended[10].decided and ended[10].exit == "local"
    assert not ended[11].decided and ended[11].reason == RESTARTED
    assert second.counters["undecided_restarted"] == 1
    for sample in (10, 11):  # late repeats of both are dropped
        rig_on.send(Tick(sample=sample, t=time.time()))
    rig_on.settle(later=LATER)
    assert len(rig_on.decisions()) == 2
    second.close()
    third = started(rig_on, tmp_path)  # everything acknowledged: nothing again
    rig_on.settle()
    assert len(rig_on.decisions()) == 2 and 10 in third.decided and 11 in third.decided
    third.close()


def test_a_second_aggregator_on_the_same_state_is_refused(rig_on, tmp_path):
    first = started(rig_on, tmp_path)
    with pytest.raises(DDNNError, match="another aggregator holds the state"):
        other = Rig(rig_on.manifest, rig_on.bus)
        other.artifacts = rig_on.artifacts
        started(other, tmp_path)
    first.close()
    started(rig_on, tmp_path).close()  # free again once it stopped


def test_batch_durability_publishes_after_one_sync(rig_on, tmp_path):
    agg = started(rig_on, tmp_path, Durability.batch)
    rig_on.send(Tick(sample=20, t=time.time()))
    for d in range(6):
        rig_on.send(scores(20, Role.device(d), CALM))
    rig_on.settle()  # decided, journaled, held for its fsync
    assert 20 in agg.decided and rig_on.decisions() == []
    rig_on.settle(later=BATCH_SECONDS)
    assert [d.sample for d in rig_on.decisions()] == [20]
    assert agg.outbox.counters["journal_syncs"] == 1
    agg.close()
