"""The live system: real broker, real service processes, compared with offline evaluation.

Parity is the invariant the design holds the system to: for the same exported model, inputs
and thresholds, every live decision (class and exit tier) equals `ddnn eval`'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddnn.core.roles import CLOUD
from ddnn.live.broker.start import find_mosquitto, start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.wire import Decision, Status, Tick, Topics, decode, encode
from ddnn.nn.checkpoint import load_model
from ddnn.ops import deploy
from ddnn.ops.demo import replayed
from tests.helpers import ddnn, ddnn_json


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def live_and_offline(
    tmp: Path, model: Path, samples: int, *options: str
) -> tuple[dict, list, list]:
    live_file, offline_file = tmp / "live.jsonl", tmp / "offline.jsonl"
    report = ddnn_json(
        "demo", "--model", str(model), "--samples", str(samples),
        "--decisions", str(live_file), *options, timeout=600,
    )  # fmt: skip
    artifacts = tmp / "artifacts"
    exported = ddnn_json("export", "--model", str(model), "--out", str(artifacts))
    assert exported["model_version"] == report["model_version"]
    ddnn_json("eval", "--model", str(artifacts), "--decisions", str(offline_file))
    return report, read_lines(live_file), read_lines(offline_file)


def assert_parity(report: dict, live: list[dict], offline: list[dict], samples: int) -> None:
    assert report["decided"] == samples and report["missing"] == 0
    assert report["decisions_missing"] == report["decisions_twice"] == 0
    assert report["decisions_repeated"] == 0  # no connection broke: no QoS 1 redelivery
    assert report["anomalies"] == {} and report["degraded"] == 0
    assert [d["sample"] for d in live] == list(range(samples))  # exactly one each
    expected = [offline[k % len(offline)] for k in range(samples)]
    got = [(d["class_index"], d["exit"]) for d in live]
    want = [(d["class_index"], d["exit"]) for d in expected]
    assert got == want
    exits = {d["exit"] for d in live}
    assert len(exits) >= 2, f"thresholds left only {exits}: parity would not cover escalation"
    offline_bytes = np.mean([d["device_bytes"] for d in expected])
    assert report["bytes_per_device"] == pytest.approx(offline_bytes, abs=0.01)
    assert report["clean_exits"]


def test_live_decisions_equal_offline_evaluation(tmp_path, tiny):
    report, live, offline = live_and_offline(tmp_path, tiny, 420)
    assert len(offline) == 400
    assert_parity(report, live, offline, 420)  # past the end of the test part: it wraps
    assert set(report["latency_ms"]) == {"local", "cloud"}
    assert report["throughput"] == pytest.approx(report["decided"] / report["seconds"], rel=0.05)
    assert report["broker"]["ceiling_messages_per_second"] > 0


@pytest.mark.slow  # ~25 s of processes; test_services.py runs the same model in process
def test_live_decisions_of_a_hybrid_model_with_an_edge_tier_equal_offline_evaluation(
    tmp_path, hybrid
):
    """An edge tier, a learned router (the learned-router paper) deciding at the local exit (the
    aggregator runs it in NumPy from its artifact), a drop threshold at the edge exit (the
    exit-placement paper: those samples end "abstained", still exactly once), 2-bit devices and
    4-bit edges whose maps travel at 2 and 4 bits per value, and a float cloud (torch runtime: it
    has no bit-packed form). Entropy exits on binary tiers with an edge run the same steps in
    test_services.py's whole deployment."""
    report, live, offline = live_and_offline(tmp_path, hybrid, 150)
    assert_parity(report, live, offline, 150)
    assert {d["exit"] for d in live if not d["abstained"]} == {"local", "edge", "cloud"}
    abstained = [d for d in live if d["abstained"]]
    assert abstained and all(d["exit"] == "edge" and d["class_index"] is None for d in abstained)
    assert report["abstained"] == len(abstained)
    manifest = json.loads((tmp_path / "artifacts" / "manifest.json").read_text())
    assert manifest["config"]["model"]["cloud"]["precision"] == "float"
    assert manifest["packed"] == {}  # no tier of it packs into bits


@pytest.mark.slow  # ~20 s of processes; the default run is near its 8 minutes
def test_live_decisions_through_a_bridge_to_the_clouds_broker_equal_offline_evaluation(
    tmp_path, tiny
):
    """The site's broker (devices, aggregator) and the cloud's (TLS, its own accounts)
    joined by a mosquitto bridge that carries only offload requests, feature maps and the
    cloud's answers: every decision, cloud exits included, as offline, exactly once."""
    if find_mosquitto() is None:
        pytest.skip("a bridge needs mosquitto")
    report, live, offline = live_and_offline(tmp_path, tiny, 120, "--bridge")
    assert report["broker"]["bridged"] and report["broker"]["cloud_url"].startswith("mqtts://")
    assert_parity(report, live, offline, 120)
    assert "cloud" in {d["exit"] for d in live}


def test_live_decisions_of_a_model_trained_on_an_mvmc_file_equal_offline_evaluation(
    tmp_path, on_mvmc_file
):
    """The devices replay the data the model was trained on, not the default synthetic set:
    live accuracy is that of `ddnn eval` on the same samples."""
    model, _ = on_mvmc_file
    report, live, offline = live_and_offline(tmp_path, model, 40)
    assert len(offline) == 40  # the whole test part of the file, each sample once
    assert_parity(report, live, offline, 40)
    evaluated = ddnn_json("eval", "--model", str(model))
    assert report["accuracy"] == pytest.approx(evaluated["accuracy"]["overall"], abs=0.01)


def test_demo_on_the_wall_clock_decides_consecutive_frames_as_offline(tmp_path, tiny):
    """`--fps`: the devices free-run like cameras on synchronized clocks, nothing is
    ticked, and every frame of the listened-for slots is decided once, as offline (slot k
    replays row k mod the test part's length)."""
    report, live, offline = live_and_offline(tmp_path, tiny, 60, "--fps", "20")
    assert report["clock"] == {"kind": "wall", "fps": 20.0}
    assert report["decided"] == 60 and report["missing"] == report["degraded"] == 0
    first = live[0]["sample"]
    assert abs(first / 20 - time.time()) < 300  # slot k began at Unix time k / fps
    assert [d["sample"] for d in live] == list(range(first, first + 60))  # exactly once each
    expected = [offline[d["sample"] % len(offline)] for d in live]
    got = [(d["class_index"], d["exit"]) for d in live]
    assert got == [(d["class_index"], d["exit"]) for d in expected]
    assert report["mismatches"] == 0 and len({d["exit"] for d in live}) >= 2
    assert report["throughput"] == 20.0  # the cameras' rate


def test_the_demo_says_when_the_devices_replay_the_test_part():
    """Sample k replays test sample k % size: `--data synth:n=5` (a test part of one sample)
    once decided one image 500 times under the words "(1 samples)"."""
    assert replayed(30, 400) == "400 samples"
    assert replayed(20, 1) == "1 sample, each replayed in turn: 20 passes"
    assert replayed(500, 400) == "400 samples, each replayed in turn: 1.25 passes"


def test_data_that_does_not_fit_the_model_is_refused_by_device_and_demo(tmp_path, tiny):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (30, 64, 96, 3)).astype(np.float32)  # 6 tiles of 3x32x32
    np.savez(tmp_path / "two.npz", X=images, y=rng.integers(0, 2, 30))  # classes 0 and 1
    spec = f"tiles:{tmp_path / 'two.npz'}"
    artifacts = tmp_path / "artifacts"
    ddnn_json("export", "--model", str(tiny), "--out", str(artifacts))
    for command in (
        ["device", "--artifacts", str(artifacts), "--id", "0", "--source", spec],
        ["demo", "--model", str(tiny), "--data", spec, "--samples", "5"],
    ):
        proc = ddnn(*command, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "does not fit the model" in proc.stderr and "classes ['0', '1']" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_demo_on_the_embedded_brokers(tiny):
    """What the README's first command starts without mosquitto (rumqttd: accounts, no
    grants), and amqtt as an external broker."""
    report = ddnn_json(
        "demo", "--model", str(tiny), "--samples", "40", "--kind", "rumqttd", timeout=600
    )  # fmt: skip
    assert report["broker"]["kind"] == "rumqttd" and report["broker"]["enforces_grants"] is False
    assert report["decided"] == 40 and report["mismatches"] == report["degraded"] == 0
    with start_broker(kind="amqtt") as broker:
        report = ddnn_json(
            "demo", "--model", str(tiny), "--samples", "40", "--devices", "4",
            "--broker", broker.url, "--mqtt", broker.protocol, timeout=600,
        )  # fmt: skip
    assert report["decided"] == 40 and report["broker"]["kind"] == "external"
    assert report["devices"] == 4


def start(role: str, artifacts: Path, broker, log: Path, *args: str) -> subprocess.Popen:
    command, _, index = role.partition("-")
    argv = [sys.executable, "-m", "ddnn", command, "--artifacts", str(artifacts)]
    argv += ["--broker", broker.url, "--mqtt", broker.protocol, "--deployment", "t", *args]
    argv += ["--id", index] if index else []
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture
def deployment(tmp_path, tiny):
    """An exported tiny model, a broker, and a client watching decisions and status."""
    artifacts = tmp_path / "artifacts"
    manifest = ddnn_json("export", "--model", str(tiny), "--out", str(artifacts))
    with start_broker() as broker:
        client = MqttClient(broker.settings(), "test-client").connect()
        topics = Topics("t", manifest["model_version"])
        client.subscribe(topics.decisions)
        client.subscribe(topics.all_status)
        try:
            yield artifacts, broker, client, topics
        finally:
            client.close()


def stop_cleanly(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    assert [proc.wait(timeout=10) for proc in procs] == [0] * len(procs)  # SIGTERM: clean


def next_message(client: MqttClient, kind: type, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        item = client.get(timeout=0.2)
        if item is not None and isinstance(m := decode(item[1]), kind):
            return m
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


def wait_online(client: MqttClient, roles: set[str], timeout: float = 60.0) -> None:
    online: set[str] = set()
    while not roles <= online:
        status = next_message(client, Status, timeout)
        (online.add if status.state == "online" else online.discard)(status.role)


def test_bad_payloads_are_counted_and_a_sample_nobody_answers_is_undecided(deployment, tmp_path):
    artifacts, broker, client, topics = deployment
    log = tmp_path / "aggregator.log"
    proc = start("aggregator", artifacts, broker, log, "--score-deadline", "0.2")
    wait_online(client, {"aggregator"})
    for payload in (b"\xc1not msgpack", b"\x93\x01\x02\x03", b"\x81\xa1v\x07"):
        client.publish(topics.scores("device-0"), payload, qos=1)
    client.publish(topics.tick, encode(Tick(sample=7, t=time.time())), qos=1)
    decision = next_message(client, Decision)
    assert decision.sample == 7 and not decision.decided
    assert "no device answered" in decision.reason
    assert proc.poll() is None  # still serving
    stop_cleanly([proc])
    text = log.read_text()
    assert "not msgpack: FormatError" in text and "unsupported schema version: 7" in text
    assert "not a msgpack map: list" in text


def test_a_corrupt_artifact_is_refused_with_a_clear_error(tmp_path, tiny):
    artifacts = tmp_path / "artifacts"
    ddnn_json("export", "--model", str(tiny), "--out", str(artifacts))
    blob = bytearray((artifacts / "device-1.npz").read_bytes())
    blob[-30] ^= 0xFF
    (artifacts / "device-1.npz").write_bytes(bytes(blob))
    proc = ddnn("device", "--artifacts", str(artifacts), "--id", "1", check=False)
    assert proc.returncode == 2
    assert "does not match its hash" in proc.stderr and "Traceback" not in proc.stderr
    proc = ddnn("device", "--artifacts", str(tmp_path), "--id", "1", check=False)
    assert proc.returncode == 2 and "not a `ddnn export` directory" in proc.stderr


def test_a_cloud_outage_leaves_local_answers_standing_as_degraded(deployment, tmp_path):
    artifacts, broker, client, topics = deployment
    roles = [f"device-{i}" for i in range(6)] + ["aggregator"]  # and no cloud
    procs = [
        start(role, artifacts, broker, tmp_path / f"{role}.log", *extra)
        for role in roles
        for extra in [("--cloud-deadline", "0.3") if role == "aggregator" else ()]
    ]
    try:
        wait_online(client, set(roles))
        for k in range(30):
            client.publish(topics.tick, encode(Tick(sample=k, t=time.time())), qos=1)
        decisions = [next_message(client, Decision) for _ in range(30)]
    finally:
        stop_cleanly(procs)
    assert sorted(d.sample for d in decisions) == list(range(30))
    assert all(d.decided and d.exit == "local" and d.devices == list(range(6)) for d in decisions)
    degraded = [d for d in decisions if d.degraded]
    assert 0 < len(degraded) < 30  # the confident half exits locally as usual
    assert all("cloud did not answer" in d.reason for d in degraded)
    assert all(d.latency_ms >= 300 for d in degraded)


@pytest.mark.slow  # ~35 s of processes; the in-process replica tests run by default
def test_cloud_replicas_share_the_jobs_and_one_killed_mid_stream_loses_no_sample(tmp_path, tiny):
    """Two cloud replicas behind an MQTT 5 shared subscription (real mosquitto, real
    processes): both answer jobs; one is killed (SIGKILL) halfway through the stream; every
    sample still ends in exactly one decision, none degraded, each equal to offline
    evaluation, the cloud deciding after the kill as before it."""
    if find_mosquitto() is None:
        pytest.skip("shared subscriptions need an MQTT 5 broker: mosquitto")
    net, cfg, meta = load_model(tiny)
    prepared = deploy.prepare(net, cfg, meta, tmp_path, "replicas")
    broker = start_broker(kind="mosquitto", access=prepared.access)
    worked: dict[str, int] = {}
    samples, kill_at = 300, 150

    def kill_one(k: int) -> None:
        if k == kill_at:  # 3 s in at 50/s: each replica has published a status with counters
            for instance, status in driver.instances.items():
                if status.role == CLOUD:
                    worked[instance] = status.counters.get("samples", 0)
            driver.dead.add("cloud.1")
            fleet.kill("cloud.1")

    try:
        with deploy.deployment(prepared, broker.settings(), tmp_path, cloud_replicas=2) as running:
            driver, fleet = running.driver, running.fleet
            assert running.processes.count(CLOUD) == 1 and "cloud.1" in running.processes
            driver.run(range(samples), rate=50.0, before=kill_one)
    finally:
        broker.stop()
    assert len(worked) == 2 and all(n > 0 for n in worked.values()), worked
    decisions = driver.decisions
    assert sorted(decisions) == list(range(samples)) and dict(driver.anomalies) == {}
    assert not any(d.degraded or not d.decided for d in decisions.values())
    after = [d for k, d in decisions.items() if k > kill_at + 8]
    assert sum(d.exit == "cloud" for d in after) >= 10
    parity = running.reference.compare(decisions.values())
    assert parity["compared"] == samples and parity["mismatches"] == 0
    assert running.codes["cloud"] == 0 and running.codes["aggregator"] == 0


def test_the_demo_refuses_cloud_replicas_it_cannot_run(tiny):
    """Shared subscriptions are MQTT 5: the embedded broker (3.1.1) cannot hold replicas."""
    result = ddnn("demo", "--model", str(tiny), "--cloud-replicas", "2", "--broker",
                  "mqtt://127.0.0.1:1", "--mqtt", "3.1.1", check=False)  # fmt: skip
    assert result.returncode != 0 and "MQTT 5 shared" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        (["--quick-ack"], "--mqtt and --quick-ack describe the broker of --broker"),
        (["--mqtt", "3.1.1"], "--mqtt and --quick-ack describe the broker of --broker"),
        (["--kind", "amqtt", "--broker", "mqtt://127.0.0.1:1"], "--kind picks the broker"),
    ],
)
def test_the_demo_refuses_broker_options_that_do_not_go_together(tiny, options, message):
    result = ddnn("demo", "--model", str(tiny), *options, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
