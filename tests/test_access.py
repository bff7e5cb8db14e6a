"""Per-role broker accounts: what `ddnn export` writes, and real brokers enforcing it.

Every account tries to publish on every other role's topics (retained, through an MQTT 5
topic alias, and under non-canonical spellings of role names) against mosquitto and the
embedded broker: nothing forged reaches a subscriber, and mosquitto's PUBACK reason codes
count every denial. TLS runs end to end against mosquitto with certificates made here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import trustme
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ddnn.core.errors import ConfigError, DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import AGGREGATOR, CLOUD, Role
from ddnn.live.access import (
    ACL,
    BRIDGE,
    EMQX_ACL,
    OBSERVER,
    PASSWORDS,
    TRIGGER,
    access_dir,
    check_password,
    covers,
    grants,
    login,
    merge_access,
    read_acl,
    read_credentials,
    read_passwords,
    write_access,
)
from ddnn.live.broker import start as broker_module
from ddnn.live.broker.running import RunningBroker, TlsFiles
from ddnn.live.broker.start import find_mosquitto, free_port, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service_cli import ServiceSetup
from ddnn.live.wire import Topics
from ddnn.ops.faults.hostile_scenarios import forged_topics
from tests.helpers import ddnn, ddnn_json
from tests.inprocess import DEPLOYMENT, whole_rig

# the kinds that enforce grants (rumqttd checks accounts only: test_rumqttd_...)
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
        for topic in (topics.offload, topics.decisions):
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


def test_export_writes_private_accounts_that_round_trip(plain, tmp_path):
    artifacts = tmp_path / "export"
    shutil.copytree(plain, artifacts)
    result = ddnn_json("credentials", "--artifacts", str(artifacts), "--deployment", "site-1")
    folder = Path(result["access"])
    assert folder == access_dir(artifacts, "site-1")
    manifest = read_manifest(artifacts)
    model = manifest.ddnn_config().model
    accounts = grants(model, Topics("site-1", manifest.model_version))
    assert set(result["accounts"]) == set(accounts)
    hashes = read_passwords(folder / PASSWORDS)
    for name in accounts:
        path = folder / f"{name}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        login = read_credentials(path)
        assert login.username == f"site-1/{name}" and login.deployment == "site-1"
        assert check_password(login.password, hashes[login.username])
        assert not check_password(login.password + "x", hashes[login.username])
    assert stat.S_IMODE((folder / PASSWORDS).stat().st_mode) == 0o600

    def as_sets(accounts, prefix=""):
        return {prefix + name: (set(g.read), set(g.write)) for name, g in accounts.items()}

    assert as_sets(read_acl(folder / ACL)) == as_sets(accounts, "site-1/")
    # the same grants for an EMQX cluster: an allow rule per account and action, then deny
    emqx = (folder / EMQX_ACL).read_text().splitlines()
    assert emqx[-1] == "{deny, all}."
    rules = [line for line in emqx if line.startswith("{allow")]
    for name, grant in accounts.items():
        for action, filters in (("subscribe", grant.read), ("publish", grant.write)):
            head = f'{{allow, {{username, "site-1/{name}"}}, {action}, ['
            (rule,) = [r for r in rules if r.startswith(head)]
            assert json.loads(rule[len(head) - 1 : -2]) == list(filters)
    # mosquitto's own tool verifies the hashes we write the way the broker will
    if shutil.which("mosquitto_passwd"):
        check = tmp_path / "check"
        login = read_credentials(folder / "cloud.json")
        check.write_text(f"site-1/cloud:{login.password}\n")
        subprocess.run(["mosquitto_passwd", "-U", str(check)], check=True)
        assert check_password(login.password, check.read_text().strip().partition(":")[2])


def test_a_services_credentials_of_another_role_or_deployment_are_refused(plain):
    version = read_manifest(plain).model_version
    wrong = access_dir(plain, "default") / "device-1.json"
    setup = ServiceSetup(BrokerSettings(), "default", credentials=wrong)
    with pytest.raises(ConfigError, match="holds the account 'default/device-1'"):
        setup.login(plain, Role.device(0), version)
    assert setup.login(plain, Role.device(1), version).username == "default/device-1"
    elsewhere = ServiceSetup(BrokerSettings(), "site-9", credentials=wrong)
    with pytest.raises(ConfigError, match="of deployment 'default', not 'device-1' of 'site-9'"):
        elsewhere.login(plain, Role.device(1), version)
    # by default the role's own file in the export, if the deployment has one
    found = ServiceSetup(BrokerSettings(), "default").login(plain, Role.device(2), version)
    assert found.username == "default/device-2"
    assert ServiceSetup(BrokerSettings(), "nowhere").login(plain, CLOUD, version).username is None
    with pytest.raises(ConfigError, match="not 0000 of 'default'"):
        ServiceSetup(BrokerSettings(), "default").login(plain, CLOUD, "0000")
    with pytest.raises(ConfigError, match="not 0000 of 'default'"):  # given as a file too
        ServiceSetup(BrokerSettings(), "default", credentials=wrong).login(
            plain, Role.device(1), "0000"
        )


# -- real brokers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(plain, tmp_path_factory, request) -> tuple[Path, Topics]:
    """An export with the accounts of deployment DEPLOYMENT."""
    artifacts = tmp_path_factory.mktemp("secured") / "export"
    shutil.copytree(plain, artifacts)
    manifest = read_manifest(artifacts)
    access = write_access(
        artifacts, manifest.ddnn_config().model, DEPLOYMENT, manifest.model_version
    )
    return access, Topics(DEPLOYMENT, manifest.model_version)


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


def test_without_mosquitto_the_embedded_broker_is_rumqttd_unless_grants_must_hold(
    secured, monkeypatch
):
    """What the README's first command gets on a machine without mosquitto (rumqttd: the
    demo's accounts are all its own processes), and what `ddnn faults` and `ddnn broker
    --artifacts` get there (amqtt: their grants must hold)."""
    access, _ = secured
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    for given, grants_needed, kind in (
        (None, True, "rumqttd"),
        (access, False, "rumqttd"),
        (access, True, "amqtt"),
    ):
        with start_broker(access=given, grants=grants_needed) as broker:
            assert broker.kind == kind
            assert broker.enforces_grants == (kind == "amqtt")


def test_rumqttd_takes_the_accounts_and_nobody_else_but_never_stands_in_for_grants(
    secured, tmp_path
):
    """rumqttd checks logins and has no topic grants: it is refused where grants must hold,
    and where they need not (a demo's own processes) it takes the accounts alone. It reads
    the passwords in clear from the account files, which a merged folder does not have."""
    access, _ = secured
    with pytest.raises(DDNNError, match="rumqttd checks accounts but not their topic grants"):
        start_broker(kind="rumqttd", access=access)
    with start_broker(kind="rumqttd", access=access, grants=False) as broker:
        assert not broker.enforces_grants and broker.settings().quick_ack
        MqttClient(broker.settings("device-0"), "device-0").connect(timeout=5).close()
        device = broker.settings("device-0")
        for nobody in (
            broker.settings(),  # anonymous
            device.model_copy(update={"password": "guess"}),
            device.model_copy(update={"username": "mallory"}),
        ):
            with pytest.raises(DDNNError, match="closed before the broker answered"):
                MqttClient(nobody, "nobody").connect(timeout=2)
    merged = merge_access([access], tmp_path / "merged")
    with pytest.raises(DDNNError, match="rumqttd needs each account's password in clear"):
        start_broker(kind="rumqttd", access=merged, grants=False)


def test_ddnn_broker_takes_the_exports_accounts_and_nobody_else(plain, tmp_path):
    artifacts = tmp_path / "export"
    shutil.copytree(plain, artifacts)
    refused = ddnn("broker", check=False, timeout=60)
    assert refused.returncode != 0 and "--artifacts DIR" in refused.stderr
    exposed = ddnn("broker", "--anonymous", "--host", "0.0.0.0", check=False, timeout=60)
    assert exposed.returncode != 0 and "refusing to take anonymous" in exposed.stderr
    port = free_port()
    command = [sys.executable, "-m", "ddnn", "broker", "--artifacts", str(artifacts)]
    command += ["--port", str(port), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline()]
        while lines[-1] not in ("}\n", ""):  # the JSON document ends with its own line
            lines.append(process.stdout.readline())
        assert lines[-1], process.stderr.read()
        info = json.loads("".join(lines))
        base = BrokerSettings(url=info["url"], protocol=info["protocol"])
        login = read_credentials(access_dir(artifacts, "default") / "device-0.json")
        settings = base.model_copy(update={"username": login.username, "password": login.password})
        MqttClient(settings, "member").connect(timeout=10).close()
        with pytest.raises(DDNNError, match="Not authorized"):
            MqttClient(base, "stranger").connect(timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    assert process.returncode == 0


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory, secured) -> tuple[RunningBroker, Path, Path]:
    """mosquitto over TLS with a certificate for 127.0.0.1 from a CA made here; also the CA
    file to trust and one of another CA."""
    if find_mosquitto() is None:
        pytest.skip("TLS needs the mosquitto broker")
    folder = tmp_path_factory.mktemp("tls")
    ca, stranger = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    stranger.cert_pem.write_to_path(str(folder / "stranger.pem"))
    access, _ = secured
    files = TlsFiles(folder / "server.pem", folder / "server.key")
    with start_broker(kind="mosquitto", access=access, tls=files) as broker:
        yield broker, folder / "ca.pem", folder / "stranger.pem"


def test_tls_with_the_right_ca_and_account_carries_messages(tls, secured):
    broker, ca, _ = tls
    _, topics = secured
    assert broker.url.startswith("mqtts://")
    observer = MqttClient(broker.settings(OBSERVER).model_copy(update={"tls_ca": ca}), "o")
    observer.subscribe(topics.all_status)
    observer.connect(timeout=10)
    device = MqttClient(broker.settings("device-3").model_copy(update={"tls_ca": ca}), "d")
    device.connect(timeout=10)
    assert device.publish(topics.status(Role.device(3)), b"over tls", qos=1)
    assert observer.get(5) == (topics.status(Role.device(3)), b"over tls")
    device.close()
    observer.close()


def test_tls_refuses_a_server_signed_by_another_ca(tls):
    broker, _, stranger = tls
    settings = broker.settings(CLOUD).model_copy(update={"tls_ca": stranger})
    with pytest.raises(DDNNError, match="TLS handshake failed: .*certificate"):
        MqttClient(settings, "wrong-ca").connect(timeout=1.5)


def test_tls_refuses_a_certificate_for_another_host_name(tls):
    """The certificate names 127.0.0.1 only; reached as localhost (the same machine) it
    must not be trusted."""
    broker, ca, _ = tls
    url = broker.url.replace("127.0.0.1", "localhost")
    settings = broker.settings(CLOUD).model_copy(update={"url": url, "tls_ca": ca})
    with pytest.raises(DDNNError, match="TLS handshake failed: .*(match|mismatch)"):
        MqttClient(settings, "wrong-host").connect(timeout=1.5)


def test_tls_with_a_wrong_password_is_refused(tls):
    broker, ca, _ = tls
    settings = broker.settings(CLOUD).model_copy(update={"tls_ca": ca, "password": "guess"})
    with pytest.raises(DDNNError, match="Not authorized"):
        MqttClient(settings, "bad-password").connect(timeout=5)


def test_files_only_their_owner_may_read(secured):
    access, _ = secured
    for path in access.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name != ACL:
            assert mode & 0o077 == 0, (path, oct(mode))
    assert os.access(access / ACL, os.R_OK)
