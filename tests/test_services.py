"""Each service's state machine, in-process on the in-memory bus (tests/inprocess.py): fast
and deterministic. This module: the bus and the aggregator (the devices, the tiers and whole
deployments: test_tiers.py). The same services against real processes and a real broker are
in test_live.py and test_faults.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import aggregator.service
import cloud.service as cloud_service
from aggregator.awaited import SILENT_AFTER
from aggregator.ledger import Ledger
from aggregator.service import AggregatorService
from aggregator.weights import load_exit_weights
from cloud.service import TierService
from ddnn.core.errors import DDNNError
from ddnn.core.roles import AGGREGATOR, CLOUD, Role
from ddnn.live.memory import MemoryBus
from ddnn.live.transport import Will
from ddnn.live.wire import (
    Features,
    Offload,
    Scores,
    Status,
    Tick,
    decode,
    encode,
)
from tests.inprocess import (
    DEPLOYMENT,
    LATER,
    SURE,
    UNSURE,
    Rig,
    aggregator_rig,
    cloud_rig,
    device_rig,
    features,
    scores,
    tier_service,
)


def test_the_memory_bus_keeps_mqtts_retain_will_and_wildcard_rules():
    bus = MemoryBus()
    bus.publish("a/kept", b"1", retain=True)
    bus.publish("a/gone", b"2", retain=True)
    bus.publish("a/gone", b"", retain=True)  # an empty retained payload clears it
    dying = bus.client("dying", will=Will("a/will", b"dead")).connect()
    watcher = bus.client("watcher").connect()
    watcher.subscribe("a/+")
    assert watcher.get(0) == ("a/kept", b"1") and watcher.get(0) is None
    bus.publish("a/b/c", b"deep")  # + is one level
    assert watcher.get(0) is None
    dying.close()
    assert watcher.get(0) is None  # a clean close does not fire the will
    again = bus.client("dying", will=Will("a/will", b"dead")).connect()
    bus.lose(again)
    assert watcher.get(0) == ("a/will", b"dead")
    assert not again.publish("a/x", b"after death")


def test_the_memory_bus_hands_each_message_of_a_shared_subscription_to_one_member():
    bus = MemoryBus()
    bus.publish("a/job", b"kept", retain=True)
    members = [bus.client(f"m{i}").connect() for i in range(2)]
    for m in members:
        m.subscribe("$share/g/a/+")
    plain = bus.client("plain").connect()
    plain.subscribe("a/+")
    assert all(m.get(0) is None for m in members)  # no retained message on a shared filter
    for i in range(4):
        bus.publish("a/job", str(i).encode())
    got = [[p for _, p in iter(lambda m=m: m.get(0), None)] for m in members]
    assert sorted(got[0] + got[1]) == [b"0", b"1", b"2", b"3"] and got[0] and got[1]
    assert len([p for _, p in iter(lambda: plain.get(0), None)]) == 5  # everything, retained too
    bus.lose(members[1])
    bus.publish("a/job", b"4")
    assert members[0].get(0) == ("a/job", b"4")


# -- the aggregator -------------------------------------------------------------------


def test_confident_devices_end_a_sample_at_the_local_exit_at_once(plain):
    rig, agg = aggregator_rig(plain)
    rig.send(Tick(sample=7, t=time.time()))
    for d in range(6):
        rig.send(scores(7, Role.device(d), SURE))
    rig.settle()  # no deadline needed: every online device answered
    [d] = rig.decisions()
    assert (d.sample, d.decided, d.exit, d.class_index, d.degraded) == (7, True, "local", 0, False)
    assert d.devices == list(range(6)) and d.bytes == {"device_scores": 6 * 12}
    assert not rig.of(Offload) and agg.pending == {}


def test_a_restarted_aggregator_decides_no_sample_twice(plain, tmp_path):
    """Its ledger file outlives it: a tick repeated after the restart is late, the sample
    window is where it was, and a record cut short by a kill is dropped."""
    ledger = tmp_path / "decided.ids"
    manifest, weights = load_exit_weights(plain)

    def started(rig: Rig) -> AggregatorService:
        agg = AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, ledger=ledger)
        rig.add(agg)
        rig.settle()
        return agg

    rig = Rig(manifest)
    for d in range(6):
        rig.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    first = started(rig)
    for sample in (7, 9):
        rig.send(Tick(sample=sample, t=time.time()))
        for d in range(6):
            rig.send(scores(sample, Role.device(d), SURE))
    rig.settle()
    first.close()
    with ledger.open("ab") as f:
        f.write(b"\x01\x02\x03")  # a kill in the middle of a record
    again = Rig(manifest, rig.bus)
    second = started(again)
    assert 7 in second.decided and 9 in second.decided and 8 not in second.decided
    again.send(Tick(sample=7, t=time.time()))
    for d in range(6):
        again.send(scores(7, Role.device(d), SURE))
    again.settle()
    assert again.decisions() == [] and second.counters["late"] == 7  # the tick, 6 scores
    second.close()
    assert ledger.stat().st_size == 8 + 2 * 16  # header and two ids: the cut record is gone
    ledger.write_bytes(b"something else")
    with pytest.raises(DDNNError, match="not an aggregator ledger"):
        AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, ledger=ledger)


def test_the_ledger_keeps_ranges_and_a_file_of_their_size(tmp_path):
    path = tmp_path / "ids"
    ledger = Ledger(path, max_ranges=10)
    for sample in [*range(5000), *range(6000, 9000, 2)]:
        ledger.add(sample)
    ledger.save()
    assert len(ledger) == 10 and 0 in ledger and 5500 in ledger and 8998 in ledger
    assert 9000 not in ledger
    assert path.stat().st_size == 8 + 10 * 16  # the ranges, not the ids
    reread = Ledger(path, max_ranges=10)
    assert [s in reread for s in (0, 4999, 5500, 8998, 8999)] == [True] * 4 + [False]


def test_a_decision_the_transport_dropped_is_published_once_it_is_back(plain):
    rig, agg = aggregator_rig(plain)
    rig.send(Tick(sample=7, t=time.time()))
    for d in range(6):
        rig.send(scores(7, Role.device(d), SURE))
    rig.bus.lose(agg.client)  # the messages are in its inbox; its publishes are dropped
    rig.settle()
    assert rig.decisions() == [] and list(agg.outbox.unsent) == [7]
    agg.poll(time.monotonic())  # still disconnected: kept
    assert list(agg.outbox.unsent) == [7]
    agg.client.connect()
    agg.poll(time.monotonic())
    rig.settle()
    [d] = rig.decisions()
    assert (d.sample, d.exit) == (7, "local") and not agg.outbox.unsent
    assert agg.outbox.counters["decisions_resent"] == 1 and agg.outbox.unacknowledged() == 0


def test_the_aggregator_waits_only_for_the_devices_online(plain):
    rig, agg = aggregator_rig(plain, online=6)
    rig.send(Status(role=Role.device(5), state="offline", t=time.time()), retain=True)
    rig.send(Tick(sample=0, t=time.time()))
    for d in range(5):
        rig.send(scores(0, Role.device(d), SURE))
    rig.settle()
    [d] = rig.decisions()
    assert d.devices == [0, 1, 2, 3, 4] and not d.degraded


def test_after_the_score_deadline_the_devices_that_answered_decide(plain):
    rig, agg = aggregator_rig(plain, scores=1.0)
    rig.send(Tick(sample=3, t=time.time()))
    rig.send(scores(3, Role.device(1), SURE))
    rig.send(scores(3, Role.device(4), SURE))
    rig.settle()
    assert rig.decisions() == []  # four online devices are still to answer
    rig.settle(later=LATER)
    [d] = rig.decisions()
    assert d.exit == "local" and d.devices == [1, 4]


def test_a_sample_no_device_answered_for_is_undecided_with_the_reason(plain):
    rig, agg = aggregator_rig(plain, scores=0.5)
    rig.send(Tick(sample=1, t=time.time()))
    rig.settle(later=LATER)
    [d] = rig.decisions()
    assert not d.decided and d.class_index is None
    assert d.reason == "no device answered within 0.5 s"
    assert agg.counters["undecided"] == 1


def test_an_unsure_sample_goes_to_the_cloud_and_the_cloud_decides(plain):
    rig, agg = aggregator_rig(plain)
    rig.send(Tick(sample=2, t=time.time()))
    for d in range(6):
        rig.send(scores(2, Role.device(d), UNSURE))
    rig.settle()
    [offload] = rig.of(Offload)
    assert offload.to == "cloud" and offload.sources == [Role.device(d) for d in range(6)]
    assert rig.decisions() == []
    received = {Role.device(d): 40 for d in (0, 2)}  # the maps of two devices arrived
    rig.send(scores(2, CLOUD, [-5.0, 9.0, -5.0], received=received))
    rig.settle()
    [d] = rig.decisions()
    assert (d.exit, d.class_index, d.degraded) == ("cloud", 1, False)
    assert d.upper_devices == [0, 2] and d.bytes["device_features"] == 80


def test_a_silent_cloud_leaves_the_local_answer_marked_degraded(plain):
    rig, agg = aggregator_rig(plain, cloud=3.0)
    rig.send(Tick(sample=4, t=time.time()))
    for d in range(6):
        rig.send(scores(4, Role.device(d), [0.2, 0.0, 0.1]))
    rig.settle()
    assert rig.of(Offload) and rig.decisions() == []
    rig.settle(later=LATER)
    [d] = rig.decisions()
    assert (d.exit, d.class_index, d.degraded) == ("local", 0, True)
    assert d.reason == "the cloud did not answer within 3 s"
    assert agg.counters["degraded"] == 1


def test_duplicates_and_late_messages_never_make_a_second_decision(plain):
    rig, agg = aggregator_rig(plain, online=2)
    rig.send(Tick(sample=5, t=time.time()))
    rig.send(scores(5, Role.device(0), SURE))
    rig.send(scores(5, Role.device(0), SURE))  # a QoS 1 redelivery
    rig.send(scores(5, Role.device(1), SURE))
    rig.send(scores(5, Role.device(1), SURE))  # after the decision
    rig.send(scores(5, CLOUD, SURE))  # nobody asked the cloud
    rig.send(Tick(sample=5, t=time.time()))  # a repeated tick does not reopen it
    rig.settle(later=LATER)
    assert len(rig.decisions()) == 1
    assert agg.counters["duplicate"] == 1 and agg.counters["late"] == 3  # scores and tick
    assert agg.pending == {}


def test_every_rejection_is_counted_by_reason_and_the_aggregator_goes_on(plain):
    rig, agg = aggregator_rig(plain, online=1)
    t = rig.topics
    rig.send(scores(9, Role.device(0), SURE))  # no tick opened sample 9
    rig.send(Tick(sample=1, t=time.time()))
    rig.send(scores(1, Role.device(0), [1.0, 2.0]))  # two classes, the model has three
    rig.send(scores(1, Role.device(6), SURE))  # the model has six devices
    rig.send(scores(1, AGGREGATOR, SURE))  # no aggregator sends scores
    rig.send(Tick(sample=1, t=time.time()), topic=t.scores(Role.device(0)))  # wrong topic
    rig.send(scores(1, Role.device(2), SURE), topic=t.scores(Role.device(0)))  # forged sender
    rig.send_raw(t.scores(Role.device(0)), b"\xc1 not msgpack")
    rig.send_raw(t.tick, encode(Tick(sample=1, t=0.0)).replace(b"\x01", b"\x02", 1))  # v: 2
    rig.settle()
    assert dict(agg.rejected) == {
        "scores for a sample no tick started": 1,
        "scores of another number of classes than the model's": 1,
        "scores from a device the model does not have": 1,
        "scores from a role that sends none": 1,
        "a message of another kind than its topic's": 1,
        "a sender other than its topic's role": 1,
        "not msgpack": 1,
        "unsupported schema version": 1,
    }
    rig.send(scores(1, Role.device(0), SURE))  # and a good message still decides
    rig.settle()
    assert [d.sample for d in rig.decisions()] == [1]


def test_the_edge_exit_and_its_fallbacks(with_edges):
    rig, agg = aggregator_rig(with_edges, edge=2.0)
    for sample in (0, 1, 2):
        rig.send(Tick(sample=sample, t=time.time()))
        for d in range(6):
            rig.send(scores(sample, Role.device(d), UNSURE))
    rig.settle()
    assert [(o.sample, o.to) for o in rig.of(Offload)] == [(0, "edge"), (1, "edge"), (2, "edge")]
    # Sample 0: both edges sure -> the edge exit. Sample 1: unsure -> on to the cloud.
    for e in (0, 1):
        rig.send(scores(0, Role.edge(e), [-9.0, -9.0, 9.0]))
        rig.send(scores(1, Role.edge(e), UNSURE))
    rig.settle()
    to_cloud = [o for o in rig.of(Offload) if o.to == "cloud"]
    assert [(o.sample, o.sources) for o in to_cloud] == [(1, [Role.edge(0), Role.edge(1)])]
    rig.send(scores(1, CLOUD, SURE))
    rig.settle(later=LATER)  # sample 2: no edge answers
    by_sample = {d.sample: d for d in rig.decisions()}
    assert (by_sample[0].exit, by_sample[0].class_index) == ("edge", 2)
    assert (by_sample[1].exit, by_sample[1].degraded) == ("cloud", False)
    assert (by_sample[2].exit, by_sample[2].degraded) == ("local", True)
    assert by_sample[2].reason == "no edge answered within 2 s"


def test_services_announce_online_retained_and_offline_on_close(plain):
    rig, dev = device_rig(plain, device=4)
    late = rig.bus.client("late").connect()
    late.subscribe(rig.topics.all_status)  # joins after: gets the retained status
    topic, payload = late.get(0)
    assert topic == rig.topics.status(Role.device(4)) and decode(payload).state == "online"
    dev.close()
    assert decode(late.get(0)[1]).state == "offline"


def test_a_device_silent_for_three_status_intervals_counts_as_offline(plain):
    """Its last will may have been lost with a broker that went down: without this, every
    later sample would wait out the score deadline for it."""
    rig, agg = aggregator_rig(plain, scores=1000.0)
    rig.send(Tick(sample=0, t=time.time()))
    for d in range(5):
        rig.send(scores(0, Role.device(d), SURE))
    rig.settle()
    assert rig.decisions() == []  # device 5 said online and has not answered
    agg.awaited.heard[5] = time.monotonic() - SILENT_AFTER - 1  # its last status, long ago
    rig.settle()
    [d] = rig.decisions()
    assert d.devices == [0, 1, 2, 3, 4] and agg.counters["devices_silent"] == 1
    assert agg.awaited.online == {0, 1, 2, 3, 4}


def test_a_graceful_stop_ends_every_pending_sample_undecided(plain):
    rig, agg = aggregator_rig(plain)
    for sample in (1, 2):
        rig.send(Tick(sample=sample, t=time.time()))
    rig.send(scores(1, Role.device(0), SURE))
    rig.settle()
    agg.close()
    rig.settle()
    decisions = rig.decisions()
    assert sorted(d.sample for d in decisions) == [1, 2]
    assert all(not d.decided and d.reason == "the aggregator stopped" for d in decisions)


def test_pending_samples_are_capped(plain, monkeypatch):
    monkeypatch.setattr(aggregator.service, "MAX_PENDING", 3)
    rig, agg = aggregator_rig(plain)
    for sample in range(5):
        rig.send(Tick(sample=sample, t=time.time()))
    rig.settle()
    assert sorted(agg.pending) == [0, 1, 2]
    assert agg.rejected["a new sample while too many are pending"] == 2
    rig.settle(later=LATER)  # the three end (undecided: no device answered); room again
    rig.send(Tick(sample=9, t=time.time()))
    rig.settle()
    assert sorted(agg.pending) == [9]


def test_a_tier_takes_maps_only_in_the_encoding_its_inputs_produce(plain):
    rig, cloud = cloud_rig(plain)
    fmap = np.ones(cloud.input_shape, dtype=np.float32)
    rig.send(Offload(sample=0, sources=[Role.device(0)], to="cloud"))
    rig.send(Features.of(0, Role.device(0), fmap, "float"))  # binary devices send bits
    rig.settle()
    assert dict(cloud.rejected) == {"features in another encoding than the tier takes": 1}
    assert rig.of(Scores) == []


def test_a_flood_of_maps_nobody_asked_for_cannot_push_out_real_ones(plain):
    rig, cloud = cloud_rig(plain)
    shape = cloud.input_shape
    rig.send(Offload(sample=1, sources=[Role.device(0), Role.device(1)], to="cloud"))
    rig.send(features(1, Role.device(0), shape))
    flood = 2000  # more than the tier's whole buffer
    for sample in range(1000, 1000 + flood):
        rig.send(features(sample, Role.device(2), shape))
    rig.settle()
    limit = cloud_service.UNASKED_PER_SOURCE
    assert cloud.rejected["features not asked for, over the per-source limit"] == flood - limit
    rig.send(features(1, Role.device(1), shape))  # the real sample completes
    rig.settle()
    assert [s.sample for s in rig.of(Scores)] == [1]


def test_a_map_for_a_future_sample_nobody_asked_for_does_not_block_its_real_offload(plain):
    """Sample ids count up, so a device can send a map for a sample yet to come: at its
    deadline the tier drops it unrun (counted), and the real offload of that id later is
    served, decided by the cloud, not the aggregator's degraded fallback."""
    rig, _ = aggregator_rig(plain, cloud=3.0)
    cloud = rig.add(tier_service(rig, plain, CLOUD, deadline=0.5))
    assert isinstance(cloud, TierService)
    shape = cloud.input_shape
    rig.send(features(7, Role.device(0), shape))  # no offload request: sample 7 is to come
    rig.settle()
    cloud.poll(time.monotonic() + LATER)  # the map's deadline passes (the cloud's alone)
    rig.settle()
    rig.send(Tick(sample=7, t=time.time()))
    for d in range(6):
        rig.send(scores(7, Role.device(d), UNSURE))
    rig.settle()
    [offload] = rig.of(Offload)
    assert offload.to == "cloud"
    for i, d in enumerate(offload.sources):
        rig.send(features(7, d, shape, seed=i))
    rig.settle(later=LATER)
    [d] = rig.decisions()
    assert (d.sample, d.exit, d.degraded) == (7, "cloud", False)
    assert d.upper_devices == list(range(6))
    assert [s.sample for s in rig.of(Scores) if s.source == CLOUD] == [7]  # the real one only
    assert cloud.counters["unasked_dropped"] == 1 and cloud.counters["late"] == 0


def test_a_replay_of_old_samples_after_many_newer_ones_is_never_decided_twice(plain, monkeypatch):
    """The issue's case scaled down, with a memory of 4 ranges of ids instead of 65,536:
    ticks far ahead (forged) cover no real sample, and once scattered ids overflow the
    memory, the old ones between the two lowest ranges count as decided, never twice."""
    monkeypatch.setattr(aggregator.service, "DECIDED_RANGES", 4)
    rig, agg = aggregator_rig(plain, online=1)

    def run(ids) -> None:
        for sample in ids:
            rig.send(Tick(sample=sample, t=time.time()))
            rig.send(scores(sample, Role.device(0), SURE))
            rig.settle()

    run([*range(200), 10**12, *range(200, 300), *range(30)])  # a far one, a replay
    assert sorted(d.sample for d in rig.decisions()) == [*range(300), 10**12]
    assert len(agg.decided) == 2  # 0..299 and the far one
    run([400, 500, 600, 350])  # scattered: 0..299, 350, 400, 500, 600, 10**12 is 6 ranges
    assert len(agg.decided) == 4
    assert 320 in agg.decided  # between the two lowest, merged: refused from now on
    run([320, 700])
    decided = [d.sample for d in rig.decisions()]
    assert 320 not in decided and 700 in decided
    assert len(decided) == len(set(decided))


def test_a_second_aggregator_of_a_deployment_refuses_to_start(plain):
    rig, first = aggregator_rig(plain)
    manifest, weights = load_exit_weights(plain)
    second = AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, rival_wait=0.3)
    started = time.monotonic()
    with pytest.raises(DDNNError, match="another aggregator .* is online"):
        second.open()
    assert time.monotonic() - started >= 0.3  # it gave the first its time to go
    second.close()  # says nothing: the first's retained status still stands
    rig.settle()
    statuses = [m for m in rig.of(Status) if m.role == AGGREGATOR]
    assert statuses[-1].state == "online" and statuses[-1].instance == first.instance
    first.close()  # once the first is gone, another may start
    rig.add(AggregatorService(manifest, weights, rig.bus, DEPLOYMENT))


def test_an_aggregator_starts_once_the_one_it_saw_online_goes_offline(plain):
    """A lagging broker still holds the "online" of an aggregator just stopped: the new one
    waits for its "offline" (here said while it waits) instead of refusing at once."""
    rig, first = aggregator_rig(plain)
    manifest, weights = load_exit_weights(plain)
    second = AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, rival_wait=30)
    opening = threading.Thread(target=second.open)
    started = time.monotonic()
    opening.start()
    time.sleep(0.3)
    assert opening.is_alive()  # waiting on the first
    first.close()
    opening.join(10)
    assert not opening.is_alive() and time.monotonic() - started < 10
    rig.settle()
    statuses = [(m.instance, m.state) for m in rig.of(Status) if m.role == AGGREGATOR]
    said = statuses.index((first.instance, "offline"))
    assert (second.instance, "online") in statuses[said:], statuses
    second.close()


def test_on_the_wall_clock_only_scores_captured_near_now_open_a_sample(plain):
    manifest, weights = load_exit_weights(plain)
    rig = Rig(manifest)
    agg = AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, clock="wall")
    rig.add(agg)
    stale = scores(5, Role.device(0), SURE).model_copy(update={"t0": time.time() - 3600})
    rig.send(stale)
    rig.send(scores(6, Role.device(0), SURE))  # captured now: no tick needed on this clock
    rig.settle()
    assert agg.rejected["scores captured too far from now"] == 1
    assert [d.sample for d in rig.decisions()] == [6]
