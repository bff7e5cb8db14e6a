"""Per-role broker accounts: what each may read and write, and real brokers enforcing it.

Every account tries to publish on every other role's topics (retained, through an MQTT 5
topic alias, and under non-canonical spellings of role names) against mosquitto and the
embedded broker: nothing forged reaches a subscriber, and mosquitto's PUBACK reason codes
count every denial. The account files, logins and TLS: test_credentials.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ddnn.core.errors import ConfigError, DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import AGGREGATOR, Role
from ddnn.live.access import (
    ACL,
    BRIDGE,
    OBSERVER,
    PASSWORDS,
    TRIGGER,
    covers,
    grants,
    login,
    merge_access,
    read_acl,
    read_credentials,
    read_passwords,
    write_access,
)
from ddnn.live.broker.running import RunningBroker
from ddnn.live.broker.start import find_mosquitto, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.wire import Topics
from ddnn.ops.faults.hostile_scenarios import forged_topics
from tests.accounts import secured as secured  # a fixture: pytest finds it here
from tests.inprocess import DEPLOYMENT, whole_rig

# the kinds that enforce grants (rumqttd checks accounts only: test_credentials.py)
BROKERS = [k for k in ("mosquitto", "amqtt") if k != "mosquitto" or find_mosquitto()]


def topics_of(artifacts: Path, deployment: str = DEPLOYMENT) -> Topics:
    return Topics(deployment, read_manifest(artifacts).model_version)


def test_each_service_subscribes_only_within_its_grants(with_edges):
    """The ACL comes from the topology, the subscriptions from the services: they agree, for
    every role of a deployment with edges (devices, edges, cloud, aggregator)."""
    rig = whole_rig(with_edges)
    accounts = grants(rig.manifest.ddnn_config().model, rig.topics)
    for service in rig.services:
        grant = accounts[service.role]
        for wanted in service.subscriptions():
            assert any(covers(g, wanted) for g in grant.read), (service.role, wanted)
    # what they publish: test_services.py's whole deployment checks every message


def test_no_role_may_write_another_roles_topics(with_edges):
    topics = topics_of(with_edges)
    accounts = grants(read_manifest(with_edges).ddnn_config().model, topics)
    roles = [name for name in accounts if name not in (TRIGGER, OBSERVER, BRIDGE)]
    for name, grant in accounts.items():
        if name == BRIDGE:
            continue  # it forwards what the cloud's inputs write: the next test
        for other in roles:
            if other == name:
                continue
            for topic in (topics.status(other), topics.scores(other), topics.features(other)):
                assert not any(covers(g, topic) for g in grant.write), (name, topic)
        writes_tick = any(covers(g, topics.tick) for g in grant.write)
        assert writes_tick == (name == TRIGGER)
        for topic in (topics.offload("edge"), topics.offload("cloud"), topics.decisions):
            assert any(covers(g, topic) for g in grant.write) == (name == AGGREGATOR)
    assert accounts[OBSERVER].write == (f"{topics.hello}/{OBSERVER}/#",)
    # an edge reads its own group's feature maps and no other device's
    model = read_manifest(with_edges).ddnn_config().model
    for e, group in enumerate(model.edge.groups):
        reads = accounts[Role.edge(e)].read
        for d in range(model.n_devices):
            readable = any(covers(g, topics.features(Role.device(d))) for g in reads)
            assert readable == (d in group), (e, d)


def test_the_bridge_carries_what_the_cloud_takes_and_answers_and_nothing_else(with_edges):
    """The `bridge` account (a site's broker logged in to the cloud's) writes what the cloud
    reads (offload requests, its inputs' feature maps) and reads what the cloud writes but
    its own feature maps, which no one beyond it takes."""
    topics = topics_of(with_edges)
    model = read_manifest(with_edges).ddnn_config().model
    accounts = grants(model, topics)
    cloud, bridge = accounts["cloud"], accounts[BRIDGE]
    hello = f"{topics.hello}/"
    assert {f for f in bridge.write if not f.startswith(hello)} == {
        f for f in cloud.read if not f.startswith(hello)
    }
    assert {f for f in bridge.read if not f.startswith(hello)} == {
        topics.scores("cloud"),
        topics.status("cloud"),
    }
    for topic in (topics.tick, topics.decisions, topics.scores("edge-0"), topics.all_status):
        assert not any(covers(g, topic) for g in bridge.write)
    local_only = read_manifest(with_edges).ddnn_config().model.model_copy(update={"cloud": None})
    assert BRIDGE not in grants(local_only, topics)


@pytest.mark.parametrize("kind", BROKERS)
def test_the_accounts_of_many_sites_share_one_broker_and_stay_apart(plain, tmp_path, kind):
    """Sites are deployments: their accounts (user names qualified by the deployment) merge
    into one broker's files, each logs in with its own, and no site's account can speak on
    another site's topics, though its role has the same name there."""
    artifacts = tmp_path / "export"
    shutil.copytree(plain, artifacts)
    manifest = read_manifest(artifacts)
    model, version = manifest.ddnn_config().model, manifest.model_version
    folders = [write_access(artifacts, model, site, version) for site in ("site-a", "site-b")]
    merged = merge_access(folders, tmp_path / "merged")
    users = set(read_passwords(merged / PASSWORDS))
    assert {"site-a/device-0", "site-b/device-0", "site-b/aggregator"} <= users
    assert set(read_acl(merged / ACL)) == users
    with pytest.raises(ConfigError, match="in two of the access folders"):
        merge_access([folders[0], folders[0]], tmp_path / "twice")
    with pytest.raises(ConfigError, match="no ':' or spaces"):
        write_access(artifacts, model, "site:c", version)
    b = Topics("site-b", version)
    with start_broker(kind=kind, access=merged) as broker:
        observer = MqttClient(login(broker.settings(), folders[1], OBSERVER), "observer-b")
        observer.subscribe(f"{b.root}/#")
        observer.connect(timeout=5)
        for site, folder in zip(("a", "b"), folders, strict=True):
            device = MqttClient(login(broker.settings(), folder, "device-0"), f"device-0-{site}")
            device.connect(timeout=5)
            device.publish(b.scores(Role.device(0)), f"from {site}".encode(), qos=1)
            device.close()
        heard = drained(observer, b)
    assert heard == [(b.scores(Role.device(0)), b"from b")]


def test_covers_is_mqtts_filter_rule():
    assert covers("a/+/c", "a/b/c") and covers("a/#", "a/b/c") and covers("a/#", "a")
    assert not covers("a/+/c", "a/b/d") and not covers("a/b", "a/b/c")
    assert covers("a/+", "a/+") and not covers("a/b", "a/+") and not covers("a/+", "a/#")


# -- real brokers --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BROKERS)
def guarded(request, secured) -> RunningBroker:
    access, _ = secured
    with start_broker(kind=request.param, access=access) as broker:
        yield broker


def drained(observer: MqttClient, topics: Topics) -> list[tuple[str, bytes]]:
    """What `observer` received up to a fence it publishes now: each publisher above closed
    after the broker acknowledged its messages, so the broker handled them all before it."""
    fence = f"{topics.hello}/{OBSERVER}/fence"
    observer.publish(fence, b"fence", qos=1)
    heard: list[tuple[str, bytes]] = []
    assert heard_until(observer, fence, heard), "the fence never came back"
    observer.close()
    return heard[:-1]


def heard_until(
    observer: MqttClient, topic: str, heard: list[tuple[str, bytes]], quiet: float = 5.0
) -> bool:
    """Collect what `observer` receives into `heard` until `topic` comes (True, its message
    last) or nothing comes for `quiet` seconds (False)."""
    while (item := observer.get(quiet)) is not None:
        heard.append(item)
        if item[0] == topic:
            return True
    return False


def test_every_forgery_by_every_account_is_denied_and_counted(guarded, secured):
    access, topics = secured
    accounts = grants(read_manifest(access.parent.parent).ddnn_config().model, topics)
    observer = MqttClient(guarded.settings(OBSERVER), "observer")
    observer.subscribe(f"{topics.root}/#")
    observer.connect()  # returns once the broker granted the subscription
    forged = 0
    heard: list[tuple[str, bytes]] = []
    for account in accounts:
        client = MqttClient(guarded.settings(account), f"forger-{account}").connect()
        for topic in forged_topics(topics, account, accounts):
            assert client.publish(topic, b"forged", qos=1, retain=topic.count("/status/") > 0)
            forged += 1
        # its own topics still work: the control that the observer hears at all. The client
        # stays connected until the observer has it: amqtt 0.12 may drop a QoS 1 message
        # whose publisher disconnects right after its PUBACK (before it was forwarded).
        own = accounts[account].write[-1].replace("#", "own")  # its probe topics at least
        assert client.publish(own, b"own", qos=1)
        heard_until(observer, own, heard, quiet=10.0)
        client.close()
        if guarded.protocol == "5":  # MQTT 5: every denial came back as a PUBACK code
            assert client.denied == len(forged_topics(topics, account, accounts)), account
    heard += drained(observer, topics)
    assert forged > 300
    assert [p for _, p in heard if p == b"forged"] == []
    own = {t for t, p in heard if p == b"own"}
    assert own == {f"{topics.hello}/{account}/own" for account in accounts}


def test_a_forgery_through_an_mqtt5_topic_alias_is_denied(guarded, secured):
    """Topic alias 1 first names a forbidden topic, then carries a publish without a topic:
    the broker must check the aliased topic both times."""
    if guarded.protocol != "5":
        pytest.skip("topic aliases are MQTT 5")
    access, topics = secured
    observer = MqttClient(guarded.settings(OBSERVER), "observer-alias")
    observer.subscribe(f"{topics.root}/#")
    observer.connect()
    login = read_credentials(access / "device-0.json")
    raw = paho.Client(paho.CallbackAPIVersion.VERSION2, "alias", protocol=paho.MQTTv5)
    raw.username_pw_set(login.username, login.password)
    codes = []
    raw.on_publish = lambda c, u, mid, rc, p: codes.append(rc)
    raw.connect(guarded.host, guarded.port)
    raw.loop_start()
    try:
        alias = Properties(PacketTypes.PUBLISH)
        alias.TopicAlias = 1
        raw.publish(topics.scores(Role.device(1)), b"forged", qos=1, properties=alias)
        raw.publish("", b"forged", qos=1, properties=alias)
        deadline = time.monotonic() + 5
        while len(codes) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        raw.loop_stop()
        raw.disconnect()
    assert drained(observer, topics) == []
    assert len(codes) == 2 and all(code.is_failure for code in codes), codes


def test_a_subscription_outside_the_grants_hears_nothing(guarded, secured):
    """amqtt refuses the subscription (and connect says so); mosquitto 2.0
    grants it but checks every delivery: either way device-0 never reads device-1's scores."""
    _, topics = secured
    snoop = MqttClient(guarded.settings("device-0"), "snoop")
    snoop.subscribe(topics.all_scores)  # the aggregator's inputs
    if guarded.kind == "amqtt":
        with pytest.raises(DDNNError, match="refused the subscription to .*scores/\\+"):
            snoop.connect(timeout=5)
        return
    snoop.connect(timeout=5)
    observer = MqttClient(guarded.settings(OBSERVER), "observer-snoop")
    observer.subscribe(topics.all_scores)
    observer.connect(timeout=5)
    device = MqttClient(guarded.settings("device-1"), "device-1").connect(timeout=5)
    assert device.publish(topics.scores(Role.device(1)), b"private", qos=1)
    assert observer.get(5) == (topics.scores(Role.device(1)), b"private")  # it was sent
    assert snoop.get(1.0) is None
    for client in (snoop, observer, device):
        client.close()


@pytest.mark.parametrize("who", ["anonymous", "wrong password", "unknown user"])
def test_the_broker_refuses_whoever_has_no_account(guarded, who):
    settings = guarded.settings("device-0")
    if who == "anonymous":
        settings = guarded.settings()
    elif who == "wrong password":
        settings = settings.model_copy(update={"password": "guess"})
    else:
        settings = settings.model_copy(update={"username": "mallory"})
    with pytest.raises(DDNNError, match="refused the connection: Not authorized"):
        MqttClient(settings, "nobody").connect(timeout=5)
