"""The devices and the upper tiers in-process on the in-memory bus (tests/inprocess.py), and
whole deployments there, replicated clouds included; the aggregator alone is in
test_services.py."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from aggregator.service import AggregatorService
from aggregator.weights import load_exit_weights
from cloud.service import TierService
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import AGGREGATOR, CLOUD, Role
from ddnn.live.access import TRIGGER, covers, grants
from ddnn.live.service import WALL_SKEW
from ddnn.live.wire import (
    Features,
    Job,
    Offload,
    Scores,
    Status,
    Tick,
    encode,
)
from tests.helpers import ddnn_json
from tests.inprocess import (
    DEPLOYMENT,
    LATER,
    SURE,
    UNSURE,
    Rig,
    cloud_rig,
    device_rig,
    features,
    scores,
    tier_service,
    whole_rig,
)

# -- a device -------------------------------------------------------------------------


def test_a_device_answers_a_tick_with_its_scores_and_sends_its_map_when_asked(plain):
    rig, dev = device_rig(plain, device=2)
    now = time.time()
    rig.send(Tick(sample=11, t=now))
    rig.settle()
    [s] = rig.of(Scores)
    expected, fmap = dev.runtime(dev.source.frame(11).image)
    assert (s.sample, s.source, s.t0) == (11, Role.device(2), now)
    assert np.array_equal(s.values(), expected)
    rig.send(Offload(sample=11, sources=[Role.device(0)], to="cloud"))  # not this device
    rig.settle()
    assert rig.of(Features) == []
    rig.send(Offload(sample=11, sources=[Role.device(2)], to="cloud"))
    rig.settle()
    [f] = rig.of(Features)
    assert f.encoding == "bits" and np.array_equal(f.array(fmap.shape), fmap)
    assert len(f.data) == fmap.size // 8
    rig.send(Offload(sample=11, sources=[Role.device(2)], to="cloud"))  # asked again
    rig.settle()
    assert len(rig.of(Features)) == 1 and dev.counters["features_expired"] == 1


def test_a_device_answers_a_repeated_tick_without_a_second_inference_and_refuses_stale_ones(
    plain,
):
    """A repeat (the driver's retry, a replay, a flood) gets the same scores again from the
    device's memory, not a second run of its slice; a tick captured far from now is refused."""
    rig, dev = device_rig(plain)
    tick = Tick(sample=4, t=time.time())
    for _ in range(3):
        rig.send(tick)
    rig.send(Tick(sample=5, t=time.time() - 2 * WALL_SKEW))
    rig.settle()
    first, *again = rig.of(Scores)
    assert again == [first, first]
    assert dev.counters["frames"] == 1 and dev.counters["tick_repeats"] == 2
    assert dict(dev.rejected) == {"a tick captured too far from now": 1}


def test_a_device_keeps_maps_for_a_while_and_a_bounded_number(plain):
    rig, dev = device_rig(plain, keep_seconds=5.0, keep_max=2)
    for sample in range(3):
        rig.send(Tick(sample=sample, t=time.time()))
    rig.settle()
    assert dev.counters["frames"] == 3 and dev.counters["features_dropped"] == 1
    rig.settle(later=LATER)  # past keep_seconds
    assert dev.counters["features_dropped"] == 3
    rig.send(Offload(sample=2, sources=[Role.device(2)], to="cloud"))
    rig.settle()
    assert rig.of(Features) == [] and dev.counters["features_expired"] == 1


def test_a_device_refuses_what_it_has_no_use_for(plain):
    rig, dev = device_rig(plain)
    rig.send(scores(0, Role.device(2), SURE), topic=rig.topics.tick)
    rig.send_raw(
        rig.topics.offload("cloud"), encode(Offload(sample=0, sources=[], to="cloud"))[:-3]
    )
    rig.settle()
    assert dict(dev.rejected) == {
        "a message of another kind than its topic's": 1,
        "not msgpack": 1,
    }
    assert dev.counters["frames"] == 0


# -- an upper tier --------------------------------------------------------------------


def test_the_cloud_runs_once_every_expected_map_arrived(plain):
    rig, cloud = cloud_rig(plain)
    shape = cloud.input_shape
    rig.send(Offload(sample=6, sources=[Role.device(1), Role.device(3)], to="cloud"))
    rig.send(features(6, Role.device(1), shape))
    rig.settle()
    assert rig.of(Scores) == []  # device 3's map is still to come
    rig.send(features(6, Role.device(3), shape))
    rig.settle()
    [s] = rig.of(Scores)
    nbytes = int(np.prod(shape)) // 8
    assert s.source == CLOUD and s.received == {Role.device(1): nbytes, Role.device(3): nbytes}
    rig.send(features(6, Role.device(3), shape))  # late: the sample already ran
    rig.settle(later=LATER)
    assert len(rig.of(Scores)) == 1 and cloud.counters["late"] == 1
    # a malformed map is refused for what it is, also when it comes late
    rig.send(features(6, Role.device(1), (1, 2, 2)))
    rig.settle()
    assert cloud.counters["late"] == 1
    assert cloud.rejected == {"features of another shape than the tier takes": 1}


def test_the_cloud_runs_on_the_maps_it_has_at_its_deadline(plain):
    rig, cloud = cloud_rig(plain, deadline=0.5)
    shape = cloud.input_shape
    rig.send(Offload(sample=1, sources=[Role.device(d) for d in range(6)], to="cloud"))
    rig.send(features(1, Role.device(4), shape))
    rig.send(Offload(sample=2, sources=[Role.device(0)], to="cloud"))  # nothing comes
    rig.settle(later=LATER)
    [s] = rig.of(Scores)
    assert s.sample == 1 and list(s.received) == [Role.device(4)]
    assert cloud.counters["nothing_arrived"] == 1


def test_the_cloud_refuses_maps_that_are_not_its_inputs_or_not_its_shape(plain):
    rig, cloud = cloud_rig(plain)
    shape = cloud.input_shape
    wrong = (shape[0], shape[1] + 1, shape[2])
    rig.send(Offload(sample=0, sources=[Role.device(0)], to="cloud"))
    cloud.receive(rig.topics.features(Role.edge(0)), encode(features(0, Role.edge(0), shape)))
    rig.send(features(0, Role.device(0), wrong))
    rig.settle()
    assert dict(cloud.rejected) == {
        "features from a role that is not an input of this tier": 1,
        "features of another shape than the tier takes": 1,
    }
    assert rig.of(Scores) == []


def test_an_edge_passes_its_own_map_to_the_cloud_when_asked(with_edges):
    rig = Rig(read_manifest(with_edges))
    role = Role.edge(1)
    edge = tier_service(rig, with_edges, role)
    inputs = edge.inputs
    assert inputs == [Role.device(d) for d in (3, 4, 5)]
    rig.add(edge)
    rig.send(Offload(sample=8, sources=inputs, to="edge"))
    for i, d in enumerate(inputs):
        rig.send(features(8, d, edge.input_shape, seed=i))
    rig.settle()
    [s] = rig.of(Scores)
    assert s.source == role and set(s.received) == set(inputs)
    rig.send(Offload(sample=8, sources=[Role.edge(0), role], to="cloud"))
    rig.settle()
    [f] = [f for f in rig.of(Features) if f.source == role]
    assert f.sample == 8 and f.encoding == "bits"


# -- a whole deployment ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["with_edges", "with_hybrid"])
def test_a_whole_deployment_in_process_decides_as_offline_evaluation(model, request, tmp_path):
    """Devices, edges, cloud and aggregator on the in-memory bus: every sample's decision
    (class and exit) equals `ddnn eval`'s, as it must over the real broker (test_live.py);
    with entropy exits on binary tiers, and with a learned router at the local exit, a drop
    threshold at the edge exit, 2-bit devices, 4-bit edges and a float cloud (2- and 4-bit
    maps on the wire, abstentions decided)."""
    artifacts = request.getfixturevalue(model)
    rig = whole_rig(artifacts)
    samples = 120
    for sample in range(samples):
        rig.send(Tick(sample=sample, t=time.time()))
        rig.settle()
    live = {d.sample: d for d in rig.decisions()}
    offline_file = tmp_path / "offline.jsonl"
    ddnn_json("eval", "--model", str(artifacts), "--decisions", str(offline_file))
    offline = [json.loads(line) for line in offline_file.read_text().splitlines()]
    assert sorted(live) == list(range(samples))
    got = [(live[k].class_index, live[k].exit, live[k].abstained) for k in range(samples)]
    want = [(o["class_index"], o["exit"], o["abstained"]) for o in offline[:samples]]
    assert got == want
    assert any(a for _, _, a in got) == (model == "with_hybrid")
    assert {e for _, e, a in got if not a} == set(rig.manifest.ddnn_config().model.exits)
    assert all(not s.rejected for s in rig.services)
    encodings = {m.encoding for _, m in rig.seen if isinstance(m, Features)}
    assert encodings == ({"c2", "c4"} if model == "with_hybrid" else {"bits"})
    # every message went out on a topic its sender's broker account may write
    accounts = grants(rig.manifest.ddnn_config().model, rig.topics)
    for topic, message in rig.seen:
        sender = getattr(message, "role", None) or getattr(message, "source", None)
        account = TRIGGER if isinstance(message, Tick) else sender or AGGREGATOR
        assert any(covers(g, topic) for g in accounts[account].write), (account, topic)


@pytest.mark.parametrize("model", ["plain", "with_edges"])
def test_replicated_clouds_decide_as_one_cloud_and_a_dead_ones_jobs_are_sent_again(model, request):
    """Two cloud replicas in a shared subscription group, fed whole jobs by the aggregator:
    the decisions are those of one cloud, both replicas answer jobs, and the jobs a replica
    held when it died are sent again after `Deadlines.resend` and answered by the other,
    so that no sample ends degraded, none twice."""
    artifacts = request.getfixturevalue(model)
    one, replicated = whole_rig(artifacts), whole_rig(artifacts, replicas=2)
    for sample in range(60):
        for rig in (one, replicated):
            rig.send(Tick(sample=sample, t=time.time()))
            rig.settle()
    decided = [
        {d.sample: (d.class_index, d.exit) for d in r.decisions()} for r in (one, replicated)
    ]
    assert decided[0] == decided[1] and sorted(decided[1]) == list(range(60))
    assert sum(e == "cloud" for _, e in decided[1].values()) >= 5
    clouds = [s for s in replicated.services if isinstance(s, TierService) and s.group]
    aggregator = replicated.services[-1]
    assert all(c.counters["samples"] > 0 for c in clouds) and not aggregator.rejected

    # the next job goes to the first replica (the bus hands jobs out in turn), which dies
    # before it reads it
    dying, survivor = clouds
    replicated.services.remove(dying)
    replicated.bus._turns["cloud"] = 0
    before = survivor.counters["samples"]
    ticked = iter(range(60, 120))
    for sample in ticked:
        replicated.send(Tick(sample=sample, t=time.time()))
        replicated.settle()
        if dying.client.get(0) is not None:  # a job reached it: it dies holding it
            replicated.bus.lose(dying.client)
            break
    assert not dying.client._attached, "no sample went to the cloud"
    replicated.settle(later=0.6)  # past the resend delay, not the cloud deadline
    for sample in ticked:
        replicated.send(Tick(sample=sample, t=time.time()))
        replicated.settle()
    final = [d for d in replicated.decisions() if d.sample >= 60]
    assert sorted(d.sample for d in final) == list(range(60, 120))
    assert not any(d.degraded for d in final)
    assert aggregator.counters["jobs_resent"] >= 1
    assert survivor.counters["samples"] > before


def test_a_replica_refuses_the_maps_of_a_job_that_do_not_check_out_and_answers_with_the_rest(
    plain,
):
    rig, cloud = cloud_rig(plain, group="g")
    good = [features(5, Role.device(d), cloud.input_shape, seed=d) for d in range(3)]
    wrong_shape = features(5, Role.device(3), (1, 2, 2))
    rig.send(Job.of(5, time.time(), [*good, wrong_shape]), topic=rig.topics.job)
    rig.settle()
    (answer,) = rig.of(Scores)
    assert sorted(answer.received) == ["device-0", "device-1", "device-2"]
    assert cloud.rejected == {"features of another shape than the tier takes": 1}
    # a plain offload or map is not for a replica: it subscribed to neither
    rig.send(good[0])
    rig.settle()
    assert len(rig.of(Scores)) == 1


def test_the_aggregator_gathers_a_replicated_clouds_maps_and_refuses_what_it_did_not_ask(plain):
    manifest, weights = load_exit_weights(plain)
    rig = Rig(manifest)
    for d in range(6):
        rig.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
    agg = AggregatorService(manifest, weights, rig.bus, DEPLOYMENT, replicated_cloud=True)
    rig.add(agg)
    rig.send(Tick(sample=3, t=time.time()))
    for d in range(6):
        rig.send(scores(3, Role.device(d), UNSURE))
    rig.settle()
    (offload,) = rig.of(Offload)
    shape = (4, 8, 8)
    for d in range(5):
        rig.send(features(3, Role.device(d), shape, seed=d))
    rig.send(features(3, Role.device(0), shape))  # a repeat
    rig.send(features(4, Role.device(1), shape))  # a sample not gathering
    rig.send(Features(sample=3, source="device-5", encoding="f32", shape=[1], data=b"\0" * 4))
    rig.settle()
    assert rig.of(Job) == []  # device 5's map is still missing
    assert agg.rejected == {"features in another encoding than the cloud takes": 1}
    assert agg.counters["duplicate"] == 1 and agg.counters["late"] == 1
    rig.settle(later=1.1)  # the gather deadline: the job goes with the five maps
    (job,) = rig.of(Job)
    assert sorted(job.maps) == [f"device-{d}" for d in range(5)] and job.sample == 3
    rig.settle(later=1.7)  # no answer within the resend delay: the same job again
    assert rig.of(Job) == [job, job] and agg.counters["jobs_resent"] == 1
    rig.settle(later=LATER)  # no answer by the cloud deadline: the local answer stands
    (decision,) = rig.decisions()
    assert decision.degraded and decision.exit == "local"
