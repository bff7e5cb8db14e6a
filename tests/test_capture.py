"""The opt-in capture of hard examples (issue 31): devices send the frames of the samples whose
decision the hard-example rule calls hard, `ddnn capture` keeps them with the decision in a
folder `ddnn data import` reads. Checked against the decisions as the driver (an observer apart
from the capture) saw them: exactly the hard samples, each with its cameras' frames byte for
byte; bounded by a quota that stops the capture and never the deployment; hostile frames
refused and counted; and no grant at all for frames where the deployment did not opt in."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from capture.folder import BUILT, LABELS, CaptureFolder, build
from capture.service import CaptureService
from ddnn.core.config import ModelConfig
from ddnn.core.hard import HardRule
from ddnn.core.manifest import read_manifest
from ddnn.core.payloads import camera_frames
from ddnn.core.roles import CAPTURE, Role
from ddnn.data import load_mvmc
from ddnn.live.access import OBSERVER, grants, read_acl, write_access
from ddnn.live.broker.start import start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.wire import Capture, Decision, Status, Tick, Topics, encode
from ddnn.nn.checkpoint import load_model
from ddnn.ops.deploy import Capturing, deployment, prepare
from tests.accounts import secured as secured  # a fixture: pytest finds it here
from tests.helpers import ddnn_json
from tests.inprocess import DEPLOYMENT, LATER, Rig, device_rig, whole_rig

RULE = HardRule()  # the default level, as the devices and the capture service have it
ALL = list(range(6))  # the devices of the tiny models: a decision without one is degraded


# -- the rule ----------------------------------------------------------------------------------
def test_one_rule_calls_samples_hard_in_arrays_and_in_a_decision():
    rng = np.random.default_rng(0)
    flags = [rng.random(64) < p for p in (0.3, 0.1, 0.05)]
    entropy = rng.random(64)
    many = RULE.holds(*flags, entropy)
    one = [RULE.holds(*(f[i] for f in flags), entropy[i]) for i in range(64)]
    assert list(many) == one and 0 < many.sum() < 64
    model = ModelConfig(n_devices=3)
    sure = dict(exit="local", entropy=0.2, degraded=False, abstained=False, devices=3)
    assert not RULE.decision(model, **sure)
    for change in ({"exit": "cloud"}, {"degraded": True}, {"abstained": True}, {"devices": 2}):
        assert RULE.decision(model, **(sure | change)), change
    assert RULE.decision(model, **(sure | {"entropy": 0.95}))
    assert not HardRule(0.99).decision(model, **(sure | {"entropy": 0.95}))
    assert not RULE.decision(model, **(sure | {"exit": None}))  # undecided: no frame to keep
    no_local = ModelConfig(n_devices=3, local=None)  # its first exit decides: no escalation
    assert not RULE.decision(no_local, **(sure | {"exit": "cloud"}))


# -- grants ------------------------------------------------------------------------------------
def capture_topics(topics: Topics, filters: tuple[str, ...]) -> list[str]:
    """The filters among `filters` on the capture channel."""
    return [f for f in filters if f.removeprefix(topics.root + "/").startswith("capture/")]


def test_only_a_deployment_that_opts_in_grants_frames_and_the_capture_account(plain, tmp_path):
    manifest = read_manifest(plain)
    model, topics = manifest.ddnn_config().model, Topics(DEPLOYMENT, manifest.model_version)
    without = grants(model, topics)
    assert CAPTURE not in without
    for name, grant in without.items():
        assert not capture_topics(topics, grant.write), name
        if name != OBSERVER:  # (it reads the deployment's every topic: on its own broker)
            assert not capture_topics(topics, grant.read), name
            assert topics.decisions not in grant.read or name == "trigger"
    with_ = grants(model, topics, capture=True)
    for d in range(model.n_devices):
        device = Role.device(d)
        assert capture_topics(topics, with_[device].write) == [topics.capture(device)]
        assert topics.decisions in with_[device].read
    assert capture_topics(topics, with_[CAPTURE].read) == [topics.channel("capture", "+")]
    assert topics.decisions in with_[CAPTURE].read
    assert with_[CAPTURE].write[0] == topics.status(CAPTURE)
    # the files a broker enforces: the ACL, and the capture account's credentials
    artifacts = tmp_path / "export"
    shutil.copytree(plain, artifacts)
    folder = write_access(artifacts, model, "site", manifest.model_version, capture=True)
    assert (folder / "capture.json").exists() and "site/capture" in read_acl(folder / "acl")
    folder = write_access(artifacts, model, "site", manifest.model_version)
    assert not (folder / "capture.json").exists()
    assert not any("/capture/" in f for g in read_acl(folder / "acl").values() for f in g.write)


def test_without_the_flag_a_broker_relays_no_frame(secured):
    """The accounts of a deployment that did not opt in (the `secured` fixture's), on a
    broker that enforces them: a device's frame on its own capture topic goes nowhere."""
    access, topics = secured
    with start_broker(access=access) as broker:
        observer = MqttClient(broker.settings(OBSERVER), "observer-capture")
        observer.subscribe(f"{topics.root}/#")
        observer.connect(timeout=5)
        device = MqttClient(broker.settings("device-0"), "device-0-capture").connect(timeout=5)
        frame = Capture.of(1, Role.device(0), np.zeros((3, 32, 32), np.uint8))
        device.publish(topics.capture(Role.device(0)), encode(frame), qos=1)
        fence = f"{topics.hello}/device-0/fence"
        device.publish(fence, b"fence", qos=1)
        heard = []
        while (item := observer.get(5.0)) is not None and item[0] != fence:
            heard.append(item[0])
        if broker.protocol == "5":
            assert device.denied == 1  # the broker said so in its PUBACK
        device.close()
        observer.close()
    assert heard == []


# -- in process --------------------------------------------------------------------------------
def hard_decision(sample: int, devices: list[int], **fields) -> Decision:
    base = dict(decided=True, class_index=1, class_name="bus", exit="cloud", entropy=0.5)
    return Decision(sample=sample, devices=devices, **(base | fields))


def frame(sample: int, device: int, shape=(3, 32, 32)) -> Capture:
    pixels = np.random.default_rng(sample * 7 + device).integers(0, 256, shape, np.uint8)
    return Capture.of(sample, Role.device(device), pixels)


def capture_rig(
    artifacts: Path, out: Path, quota: int | None = None, **kw
) -> tuple[Rig, CaptureService]:
    manifest = read_manifest(artifacts)
    rig = Rig(manifest)
    folder = CaptureFolder(out, manifest.ddnn_config().model.n_devices, quota)
    service = CaptureService(manifest, rig.bus, DEPLOYMENT, folder, RULE, **kw)
    rig.add(service)
    return rig, service


def rows(out: Path) -> list[dict[str, str]]:
    with (out / LABELS).open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_device_keeps_frames_and_sends_those_of_hard_samples_only(plain):
    rig, dev = device_rig(plain, 2, hard=RULE)
    assert rig.topics.decisions in dev.subscriptions()
    for k in (0, 1, 2):
        rig.send(Tick(sample=k, t=time.time()))
    rig.settle()
    assert len(dev.frames._maps) == 3
    rig.send(hard_decision(0, [0, 1, 2]))
    rig.send(hard_decision(1, ALL, exit="local", entropy=0.1))  # easy
    rig.send(hard_decision(2, [0, 1], exit="cloud"))  # hard, without device 2
    rig.settle()
    [sent] = rig.of(Capture)
    assert (sent.sample, sent.source) == (0, "device-2")
    replayed = dev.source.frame(0).image
    assert np.array_equal(sent.frame(), camera_frames(replayed))
    assert len(dev.frames._maps) == 0  # each forgotten once decided
    plain_rig, plain_dev = device_rig(plain, 2)
    assert plain_rig.topics.decisions not in plain_dev.subscriptions()
    plain_rig.send(Tick(sample=0, t=time.time()))
    plain_rig.settle()
    assert len(plain_dev.frames._maps) == 0


def test_hostile_frames_are_refused_and_counted_and_the_good_ones_written(plain, tmp_path):
    rig, service = capture_rig(plain, tmp_path / "cap")
    rig.send(hard_decision(5, [0, 1, 2]))
    rig.send(hard_decision(6, ALL, exit="local", entropy=0.1))  # easy: asks for nothing
    rig.settle()
    sends = [
        (frame(5, 0, (3, 16, 16)), None),  # another shape
        (frame(99, 0), None),  # a sample nobody asked for
        (frame(6, 0), None),  # an easy sample's
        (frame(5, 1), rig.topics.capture(Role.device(0))),  # another device's, on device-0's
        (frame(5, 3), None),  # a device that took no part in the decision
        (Capture.of(5, Role.edge(0), frame(5, 0).frame()), None),  # a role that sends none
        (frame(5, 0), None),
        (frame(5, 0), None),  # twice
    ]
    for message, topic in sends:
        rig.send(message, topic)
    rig.settle()
    assert service.rejected == {
        "a frame of another shape than the model's input": 1,
        "a frame of a sample no hard decision asked for": 2,
        "a sender other than its topic's role": 1,
        "a frame of a device that took no part in the decision": 1,
        "a frame from a role that sends none": 1,
        "a frame sent twice": 1,
    }
    rig.send(frame(5, 1))
    rig.send(frame(5, 2))
    rig.settle()
    rig.send(frame(5, 2))  # once written: still twice
    rig.settle()
    assert service.rejected["a frame sent twice"] == 2
    [row] = rows(tmp_path / "cap")
    assert row["sample"] == "5" and row["label"] == "bus" and row["exit"] == "cloud"
    assert [row[f"cam{i}"] for i in range(6)] == ["1", "1", "1", "0", "0", "0"]
    assert service.counters["captured_samples"] == 1 and service.counters["captured_frames"] == 3


def test_missing_frames_wait_then_the_sample_is_written_without_them(plain, tmp_path):
    out = tmp_path / "cap"
    rig, service = capture_rig(plain, out, wait=1.0)
    rig.send(hard_decision(1, ALL, degraded=True, exit="local"))
    rig.send(frame(1, 4))
    rig.settle(0.5)
    assert not (out / LABELS).read_text().count("\n1,")  # still waiting
    rig.settle(1.5)
    [row] = rows(out)
    assert [row[f"cam{i}"] for i in range(6)] == ["0", "0", "0", "0", "1", "0"]
    assert row["degraded"] == "1" and service.counters["frames_missing"] == 5
    rig.send(frame(1, 0))  # late: no refusal, counted
    rig.settle()
    assert service.counters["frames_unused"] == 1 and not service.rejected


def test_the_quota_a_full_disk_the_rate_and_the_pending_bound_stop_capture_not_the_service(
    plain, tmp_path
):
    # quota: 3 samples' bytes, then capture stops for good, the service still reading
    rig, service = capture_rig(plain, tmp_path / "quota", quota=12_000)
    for k in range(10):
        rig.send(hard_decision(k, [0]))
        rig.send(frame(k, 0))
        rig.settle()
    written = service.counters["captured_samples"]
    assert 0 < written < 10 and service.counters["quota_reached"] == 1
    assert service.folder.bytes <= service.folder.quota == 12_000
    assert service.counters["bytes_written"] == service.folder.bytes
    assert len(rows(tmp_path / "quota")) == written
    assert service.counters["dropped_stopped"] == 10 - written
    assert service.counters["hard"] == 10 and service.stopped is not None
    # a full disk (here: a file where a camera's folder was): stops it the same way
    rig, service = capture_rig(plain, tmp_path / "disk")
    shutil.rmtree(tmp_path / "disk" / "cam0")
    (tmp_path / "disk" / "cam0").write_text("in the way")
    rig.send(hard_decision(1, [0]))
    rig.send(frame(1, 0))
    rig.send(hard_decision(2, [0]))
    rig.settle()
    assert service.counters["disk_errors"] == 1 and service.counters["dropped_stopped"] == 2
    # the rate: a burst of 2 samples, then 2 per second
    rig, service = capture_rig(plain, tmp_path / "rate", rate=2.0)
    for k in range(5):
        rig.send(hard_decision(k, [0]))
    rig.settle()
    assert service.counters["dropped_rate"] == 3 and len(service.waiting) == 2
    # the samples waiting for frames: the oldest dropped
    rig, service = capture_rig(plain, tmp_path / "pending")
    service.pending_max = 2
    for k in range(5):
        rig.send(hard_decision(k, [0]))
    rig.settle()
    assert service.counters["dropped_pending"] == 3 and list(service.waiting) == [3, 4]


def test_a_restarted_capture_continues_its_folder_and_another_deployments_is_refused(tmp_path):
    folder = CaptureFolder(tmp_path, 2)
    folder.write(hard_decision(3, [0, 1]), {0: frame(3, 0).frame(), 1: frame(3, 1).frame()})
    again = CaptureFolder(tmp_path, 2, quota=10**6)
    assert again.samples == {3} and again.bytes == folder.bytes
    with pytest.raises(Exception, match="not a capture of this deployment's 3 cameras"):
        CaptureFolder(tmp_path, 3)
    assert build(tmp_path) == 1
    assert load_mvmc(tmp_path / BUILT).x.shape == (1, 2, 3, 32, 32)


def test_a_whole_deployment_in_process_captures_its_hard_samples_with_edges(with_edges, tmp_path):
    """Devices, edges, cloud, aggregator and the capture on one bus: the captured samples are
    those of the decisions the rule calls hard, with every participating device's frame."""
    rig = whole_rig(with_edges, hard=RULE)
    manifest = rig.manifest
    folder = CaptureFolder(tmp_path, manifest.ddnn_config().model.n_devices)
    rig.add(CaptureService(manifest, rig.bus, DEPLOYMENT, folder, RULE))
    for k in range(60):
        rig.send(Tick(sample=k, t=time.time()))
        rig.settle()
    rig.settle(LATER)
    model = manifest.ddnn_config().model
    decisions = {d.sample: d for d in rig.decisions()}
    hard = {k for k, d in decisions.items() if d.is_hard(RULE, model)}
    assert len(decisions) == 60 and 0 < len(hard) < 60
    assert {d.exit for d in decisions.values()} >= {"local", "edge"}
    written = rows(tmp_path)
    assert {int(r["sample"]) for r in written} == hard
    for r in written:
        devices = decisions[int(r["sample"])].devices
        assert [r[f"cam{i}"] for i in range(6)] == ["1" if i in devices else "0" for i in range(6)]


# -- live --------------------------------------------------------------------------------------
def start_capture(running, prepared, settings, out: Path, log: Path, *options: str):
    """A second capture service of the deployment (its own folder and options), as an
    operator would start one: `python -m ddnn capture`."""
    argv = [sys.executable, "-m", "ddnn", "capture", "--artifacts", str(prepared.artifacts)]
    argv += ["--broker", settings.url, "--mqtt", settings.protocol, "--deployment"]
    argv += [prepared.name, "--out", str(out), "--log-level", "warning", *options]
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 60
    while running.driver.replicas_online(CAPTURE) < 2:
        assert proc.poll() is None and time.monotonic() < end, log.read_text()
        running.driver.pump(0.2)
    return proc


def statuses(driver, role: Role) -> list[Status]:
    return [s for s in driver.instances.values() if s.role == role]


def wait_for(driver, check, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, [s.rejected for s in statuses(driver, CAPTURE)]
        driver.pump(0.1)


def live_capture(tiny: Path, tmp: Path, samples: int, quota_mb: float) -> None:
    """A live deployment (real processes, a broker that enforces the accounts) capturing at
    the default level with no rate limit, and a second capture with a quota of `quota_mb`
    beside it; hostile frames from a valid device account once every sample is decided."""
    net, cfg, meta = load_model(tiny)
    prepared = prepare(net, cfg, meta, tmp, "cap", capture=True)
    out, small = tmp / "captured", tmp / "small"
    capture = Capturing(out, options=("--rate", "0"))
    model = cfg.model
    with start_broker(access=prepared.access) as broker:
        settings = broker.settings()
        with deployment(prepared, settings, tmp, capture=capture, drain=2.0) as running:
            driver = running.driver
            second = start_capture(
                running, prepared, settings, small, tmp / "small.log", "--quota-mb", str(quota_mb)
            )
            try:
                driver.run(range(samples))
                hard = capture.hard(driver.decisions.values(), model)
                assert capture.settle(driver, hard)
                hostile(running, broker, model, second)
            finally:
                second.terminate()
                assert second.wait(10) == 0
    decisions = driver.decisions
    assert sorted(decisions) == list(range(samples)) and dict(driver.anomalies) == {}
    assert driver.repeats(range(samples)) == {"decisions_twice": 0, "decisions_repeated": 0}
    assert all(code == 0 for code in running.codes.values()), running.codes
    hard_samples = {k for k, d in decisions.items() if d.is_hard(RULE, model)}
    assert 0 < len(hard_samples) < samples
    # exactly the hard samples, each with its cameras' frames, byte for byte
    written = rows(out)
    assert sorted(int(r["sample"]) for r in written) == sorted(hard_samples)
    test = running.reference.test
    built = load_mvmc(out / BUILT)
    assert len(built) == len(written)
    for i, r in enumerate(written):
        d = decisions[int(r["sample"])]
        assert [r[f"cam{c}"] for c in range(6)] == [
            "1" if c in d.devices else "0" for c in range(6)
        ]
        assert (r["exit"], r["predicted"], r["label"]) == (d.exit, d.class_name, d.class_name)
        assert float(r["entropy"]) == pytest.approx(d.entropy, abs=1e-6)
        replayed = camera_frames(test.x[d.sample % len(test)])
        assert np.array_equal(built.x[i][d.devices], replayed[d.devices])
    # the labels file imports, with the import code, into the same MVMC file
    imported = tmp / "imported.npz"
    ddnn_json("data", "import", "--images", str(out), "--labels", str(out / LABELS),
              "--out", str(imported))  # fmt: skip
    again = load_mvmc(imported)
    assert np.array_equal(again.x, built.x) and np.array_equal(again.view_labels, built.view_labels)
    # the capture's own counts, and the refusals of the hostile frames
    [final] = [s for s in statuses(driver, CAPTURE) if not beside(s, second)]
    assert final.counters["captured_samples"] == len(hard_samples) == final.counters["hard"]
    assert final.counters["frames_missing"] == 0 and final.counters["quota_reached"] == 0
    assert final.counters["bytes_written"] == sum(
        p.stat().st_size for p in [out / LABELS, *out.glob("cam*/*")]
    )
    for reason in HOSTILE:
        assert final.rejected.get(reason, 0) >= 1, (reason, final.rejected)
    # the capture with a quota stopped at it; the deployment decided every sample all the same
    quota = int(quota_mb * 1e6)
    stopped = rows(small)
    used = sum(p.stat().st_size for p in [small / LABELS, *small.glob("cam*/*")])
    assert 0 < len(stopped) < len(hard_samples) and used <= quota
    assert quota - used < 6 * 4096  # stopped at it, not before: one more sample did not fit
    assert {int(r["sample"]) for r in stopped} <= hard_samples


HOSTILE = (
    "a frame of another shape than the model's input",
    "a frame of a sample no hard decision asked for",
    "a sender other than its topic's role",
    "a frame sent twice",
)


def beside(status: Status, proc: subprocess.Popen) -> bool:
    """Whether `status` is of the capture started beside the deployment's (`start_capture`):
    an instance's name holds its process id."""
    return f"-{CAPTURE}-{proc.pid}-" in status.instance


def hostile(running, broker, model, second: subprocess.Popen) -> None:
    """Frames from device-0's own account: of another shape, of a sample nobody asked for,
    in device-1's name, another device's topic (the broker denies it), and a frame sent
    again; then wait for the capture's status to count them."""
    driver = running.driver
    device = MqttClient(broker.settings("device-0"), "device-0-hostile").connect(timeout=5)
    topic = running.driver.topics.capture(Role.device(0))
    hard = [d for d in driver.decisions.values() if d.is_hard(RULE, model) and 0 in d.devices]
    sample = hard[0].sample
    pixels = camera_frames(running.reference.test.x[sample % len(running.reference.test), 0])
    shape = tuple(model.input_shape)
    sends = [
        Capture.of(sample, Role.device(0), np.zeros((shape[0], 8, 8), np.uint8)),
        Capture.of(10**12, Role.device(0), pixels),
        Capture.of(sample, Role.device(1), pixels),
        Capture.of(sample, Role.device(0), pixels),  # its frame again
    ]
    for message in sends:
        assert device.publish(topic, encode(message), qos=1)
    denied = Capture.of(sample, Role.device(1), pixels)
    device.publish(running.driver.topics.capture(Role.device(1)), encode(denied), qos=1)
    device.close()
    if broker.protocol == "5":
        assert device.denied == 1
    wait_for(
        driver,
        lambda: all(
            all(s.rejected.get(r, 0) >= 1 for r in HOSTILE)
            for s in statuses(driver, CAPTURE)
            if not beside(s, second)
        ),
    )


def test_a_live_deployment_captures_exactly_its_hard_samples_and_a_quota_stops_only_capture(
    tmp_path, tiny
):
    live_capture(tiny, tmp_path, samples=300, quota_mb=0.1)


@pytest.mark.slow  # ~1 min of processes
def test_a_live_run_of_1000_samples_at_the_default_level_and_a_1_mb_quota(tmp_path, tiny):
    live_capture(tiny, tmp_path, samples=1000, quota_mb=1.0)


def test_the_demo_refuses_capture_with_c_devices(tmp_path, tiny):
    from ddnn.core.errors import DDNNError
    from ddnn.ops.demo import run_demo

    with pytest.raises(DDNNError, match="C devices do not capture"):
        run_demo(
            tiny, 10, None, False, None, 16, None, tmp_path, print,
            device_runtime="c", capture=Capturing(tmp_path / "c"),
        )  # fmt: skip
