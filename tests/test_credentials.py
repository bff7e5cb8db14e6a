"""Accounts' credentials: the private files `ddnn export` and `ddnn credentials` write (the
ACL, hashed passwords, EMQX rules), the login a service takes from them, the brokers that take
them (rumqttd, `ddnn broker`), and TLS end to end against mosquitto with certificates made here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from ddnn.core.errors import ConfigError, DDNNError
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import CLOUD, Role
from ddnn.live.access import (
    ACL,
    EMQX_ACL,
    OBSERVER,
    PASSWORDS,
    access_dir,
    check_password,
    grants,
    merge_access,
    read_acl,
    read_credentials,
    read_passwords,
)
from ddnn.live.broker import start as broker_module
from ddnn.live.broker.running import RunningBroker, TlsFiles
from ddnn.live.broker.start import find_mosquitto, free_port, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.service_cli import ServiceSetup
from ddnn.live.wire import Topics
from tests.accounts import secured as secured  # a fixture: pytest finds it here
from tests.helpers import ddnn, ddnn_json


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
