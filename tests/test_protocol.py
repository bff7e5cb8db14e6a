"""The protocol table is the one statement of who reads and writes what: a service's
subscriptions, its dispatch, the broker grants (and their ACLs) and the AsyncAPI document
all follow an edit of it."""

from __future__ import annotations

import dataclasses
import time

import pytest

from aggregator.service import AggregatorService
from capture.service import CaptureService
from cloud.service import TierService
from ddnn.core.config import ModelConfig
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import AGGREGATOR, CAPTURE, CLOUD, Role, deployment_roles
from ddnn.live.access import acl_text, emqx_acl_text, grants, read_acl
from ddnn.live.asyncapi import document
from ddnn.live.protocol import PROTOCOL, Use, read_kinds, subscriptions
from ddnn.live.wire import Features, Offload, Tick, Topics, encode
from devices.service import DeviceService
from tests.inprocess import DEPLOYMENT, Rig, device_service

REFUSED = "a message of a kind this service does not take"


def without_offload_for_devices() -> dict:
    """A copy of the table in which devices no longer read the offload channel."""
    table = dict(PROTOCOL)
    device = table["device"]
    reads = tuple(u for u in device.reads if u.channel != "offload")
    table["device"] = dataclasses.replace(device, reads=reads)
    return table


def test_a_change_to_a_roles_entry_reaches_subscriptions_grants_acls_asyncapi_and_dispatch(
    plain, tmp_path
):
    table = without_offload_for_devices()
    model, topics = ModelConfig(n_devices=2), Topics(DEPLOYMENT, "v")
    device, offload = Role.device(0), topics.offload("cloud")
    # subscriptions
    assert offload in subscriptions(device, model, topics)
    assert subscriptions(device, model, topics, protocol=table) == [topics.tick]
    # grants, and the ACL files a broker enforces, made from them
    for protocol, reads in ((PROTOCOL, True), (table, False)):
        granted = grants(model, topics, protocol)
        assert (offload in granted[device].read) is reads
        (tmp_path / "acl").write_text(acl_text(granted))
        assert (offload in read_acl(tmp_path / "acl")[device].read) is reads
        [line] = [x for x in emqx_acl_text(granted).splitlines() if f'"{device}"}}, subscribe' in x]
        assert (f'"{offload}"' in line) is reads
    # the AsyncAPI document
    assert "device_receives_offload" in document()["operations"]
    assert "device_receives_offload" not in document(table)["operations"]
    # dispatch: the same device service refuses the kind its entry no longer reads
    for protocol, answers in ((PROTOCOL, True), (table, False)):
        rig = Rig(read_manifest(plain))
        dev = device_service(rig, plain, 2)
        dev.protocol = protocol
        rig.add(dev)
        assert dev.subscriptions() == subscriptions(
            dev.role, dev.model, rig.topics, None, False, protocol
        )
        rig.send(Tick(sample=5, t=time.time()))
        rig.settle()
        # handed over as if the broker had delivered it
        offer = Offload(sample=5, sources=[dev.role], to="cloud")
        dev.receive(rig.topics.offload("cloud"), encode(offer))
        rig.settle()
        assert bool(rig.of(Features)) is answers
        assert dev.rejected[REFUSED] == (0 if answers else 1)


def test_a_kind_the_table_adds_without_a_handler_stops_the_service_at_open(plain):
    table = dict(PROTOCOL)
    table["device"] = dataclasses.replace(
        table["device"], reads=(*table["device"].reads, Use("job"))
    )
    rig = Rig(read_manifest(plain))
    dev = device_service(rig, plain, 2)
    dev.protocol = table
    with pytest.raises(TypeError, match="no handler for \\['Job'\\]"):
        dev.open()


@pytest.mark.parametrize(
    ("service", "roles"),
    [
        (DeviceService, [Role.device(0)]),
        (AggregatorService, [AGGREGATOR]),
        (TierService, [Role.edge(0), CLOUD]),
        (CaptureService, [CAPTURE]),
    ],
)
def test_services_declare_a_handler_for_each_kind_their_roles_read_and_dispatch_in_the_base(
    service, roles
):
    assert "handle" not in vars(service) and "subscriptions" not in vars(service)
    modes = [(replicated, capturing) for replicated in (False, True) for capturing in (False, True)]
    read = {
        kind
        for r in roles
        for replicated, capturing in modes
        for kind in read_kinds(r, replicated, capturing=capturing)
    }
    assert set(service.handlers) == read


def test_the_bridge_carries_what_the_cloud_reads_and_writes():
    model, topics = ModelConfig(n_devices=2), Topics(DEPLOYMENT, "v")
    g = grants(model, topics)
    probe = f"{topics.hello}/bridge/#"
    assert set(g["bridge"].read) - {probe} == set(g[CLOUD].write) - {f"{topics.hello}/cloud/#"}
    assert set(g["bridge"].write) - {probe} == set(g[CLOUD].read) - {f"{topics.hello}/cloud/#"}


def test_an_offload_request_reaches_the_tier_asked_and_its_inputs_alone():
    """Offload requests go one topic per tier: with edges, a device hears only the edges'
    requests, an edge its own tier's and the cloud's (which ask it for its map), the cloud
    only its own; without edges, the devices hear the cloud's. Nothing filters a broadcast."""
    topics = Topics(DEPLOYMENT, "v")
    edge, cloud = topics.offload("edge"), topics.offload("cloud")
    model = ModelConfig(n_devices=2, edge={"groups": [[0, 1]]})
    heard = {
        role: set(subscriptions(role, model, topics)) & {edge, cloud}
        for role in deployment_roles(model)
    }
    assert heard == {
        Role.device(0): {edge},
        Role.device(1): {edge},
        AGGREGATOR: set(),
        Role.edge(0): {edge, cloud},
        CLOUD: {cloud},
    }
    assert set(grants(model, topics)[AGGREGATOR].write) >= {edge, cloud}
    flat = ModelConfig(n_devices=2)
    assert set(subscriptions(Role.device(0), flat, topics)) & {edge, cloud} == {cloud}
    assert edge not in grants(flat, topics)[AGGREGATOR].write
