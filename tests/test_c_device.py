"""The C device process (devices/c/): built from the generated slice with the system's gcc,
libmosquitto and msgpack-c, run against a real broker. It decides with the rest of the live
system exactly as the Python devices do (the demo with C devices: every sample once, live
equal to offline), refuses what the Python device refuses before it starts, and survives the
hostile messages the Python side's fuzzer makes, built with AddressSanitizer and UBSan, each
refused under the reason the Python device gives it.

A test that needs a missing tool skips with the Debian package's name, except under CI (the
environment variable CI set), where it fails: CI installs them all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest

from ddnn.core.manifest import read_manifest
from ddnn.core.payloads import pack_bits, pack_scores
from ddnn.core.roles import Role
from ddnn.live.access import OBSERVER
from ddnn.live.broker.running import TlsFiles
from ddnn.live.broker.start import start_broker
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.service import INTERNAL_ERROR
from ddnn.live.wire import (
    Features,
    Offload,
    Scores,
    Status,
    Tick,
    Topics,
    WireError,
    decode,
    encode,
)
from ddnn.nn.checkpoint import load_model
from ddnn.ops.certs import local_certs
from ddnn.ops.demo import c_devices, driven, run_demo, runtime_figures
from ddnn.ops.deploy import deployment, prepare
from ddnn.ops.faults.hostile import fuzzed
from devices.c_device import CDevices, build_c_devices, missing_tools
from devices.sources import open_source
from tests.helpers import missing_tool
from tests.inprocess import device_rig

DEVICE = 0
FUZZ = 1500  # hostile payloads per topic in the default run


def needs_c_tools() -> None:
    """Skip (fail under CI) where a C device cannot be built here."""
    if missing := missing_tools():
        missing_tool(f"needs {', '.join(missing)} (Debian packages) to build C devices")


@pytest.fixture(scope="module")
def sanitized(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> CDevices:
    """Device 0 of the local + cloud export, built with -fsanitize=address,undefined."""
    needs_c_tools()
    return build_c_devices(plain, tmp_path_factory.mktemp("c-asan"), [DEVICE], sanitize=True)


def start(built: CDevices, *args: str) -> subprocess.Popen:
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=0:exitcode=86")
    argv = [*built.command(Role.device(DEVICE)), "--id", str(DEVICE), *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def refused(built: CDevices, *args: str) -> str:
    """What the device says when it refuses to start with `args` (it must exit nonzero)."""
    proc = start(built, "--source", built.source, *args)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode not in (0, 86), output.decode()
    return output.decode()


def test_refuses_credentials_of_another_role_or_version_and_a_torn_frame_file(
    sanitized: CDevices, plain: Path, tmp_path: Path
):
    access = plain / "access" / "default"
    other_role = refused(sanitized, "--credentials", str(access / "device-1.json"))
    assert "holds the account 'default/device-1'" in other_role, other_role
    stale = json.loads((access / "device-0.json").read_text()) | {"model_version": "0123abcd"}
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    other_version = refused(sanitized, "--credentials", str(tmp_path / "stale.json"))
    assert "is for model version 0123abcd" in other_version, other_version
    assert "run `ddnn credentials` again" in other_version
    torn = tmp_path / "torn.u8"
    torn.write_bytes(bytes(3 * 32 * 32 + 7))
    wrong_size = refused(sanitized, "--source", f"frames:{torn}")
    assert f"frame file {torn} holds 3079 bytes: not a whole number of frames" in wrong_size


@pytest.fixture
def running(sanitized: CDevices, plain: Path) -> Iterator[tuple[subprocess.Popen, MqttClient]]:
    """The sanitized device on a broker, and a client that hears all of its deployment."""
    topics = Topics("default", read_manifest(plain).model_version)
    with start_broker(grants=False) as broker:
        proc = start(sanitized, "--source", sanitized.source, "--broker", broker.url)
        client = MqttClient(broker.settings(), client_id=f"c-test-{os.getpid()}")
        client.start()
        client.subscribe(f"{topics.root}/#")
        client.connect()
        try:
            status = until(client, lambda m: isinstance(m, Status) and m.state == "online")
            assert status.role == Role.device(DEVICE)
            yield proc, client
        finally:
            client.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def until(client: MqttClient, wanted, timeout: float = 15.0):
    """The first message (decoded) for which `wanted` holds, within `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        item = client.get(timeout=0.2)
        try:  # (the client hears the hostile payloads it sent too)
            message = None if item is None else decode(item[1])
        except WireError:
            continue
        if message is not None and wanted(message):
            return message
    raise AssertionError(f"nothing wanted came within {timeout} s")


def test_speaks_the_wire_of_the_python_device(running, plain: Path, sanitized: CDevices):
    """Scores and feature bits as the packed runtime gives them on the same uint8 frame; a
    repeated tick answered with the same scores, without a second frame."""
    proc, client = running
    topics = Topics("default", read_manifest(plain).model_version)
    rig, python = device_rig(plain, DEVICE)
    frames = open_source(sanitized.source, DEVICE, python.model.input_shape)
    sample = frames.length + 3  # the device cycles through its frames
    tick = Tick(sample=sample, t=time.time())
    client.publish(topics.tick, encode(tick))
    scores = until(client, lambda m: isinstance(m, Scores))
    expected, fmap = python.runtime(frames.frame(3).image)
    assert scores == Scores(
        sample=sample, source=Role.device(DEVICE), scores=pack_scores(expected), t0=tick.t
    )
    offload = Offload(sample=sample, sources=[Role.device(5), Role.device(DEVICE)], to="cloud")
    client.publish(topics.offload("cloud"), encode(offload), qos=1)
    features = until(client, lambda m: isinstance(m, Features))
    assert features == Features.of(sample, Role.device(DEVICE), fmap, "binary")
    assert features.data == pack_bits(fmap)
    client.publish(topics.tick, encode(tick))
    assert until(client, lambda m: isinstance(m, Scores)) == scores
    proc.send_signal(signal.SIGTERM)
    last = until(client, lambda m: isinstance(m, Status) and m.state == "offline")
    assert last.counters["frames"] == 1 and last.counters["tick_repeats"] == 1
    assert proc.wait(timeout=10) == 0, proc.stdout.read().decode()


def test_logs_in_over_tls_and_refuses_a_broker_it_cannot_trust(
    sanitized: CDevices, plain: Path, tmp_path: Path
):
    """mqtts:// with its own account: online when it trusts the broker's CA (the observer
    hears it), never online against a certificate of another CA, and its log says why."""
    certs, stranger = local_certs(tmp_path / "ours"), local_certs(tmp_path / "theirs").ca
    access = plain / "access" / "default"
    topics = Topics("default", read_manifest(plain).model_version)
    tls = TlsFiles(certs.cert, certs.key)
    with start_broker(kind="mosquitto", access=access, tls=tls) as broker:
        settings = broker.settings(OBSERVER).model_copy(update={"tls_ca": certs.ca})
        observer = MqttClient(settings, client_id=f"c-tls-{os.getpid()}")
        observer.start()
        observer.subscribe(topics.status(Role.device(DEVICE)))
        observer.connect()
        login = (
            "--source",
            sanitized.source,
            "--broker",
            broker.url,
            "--credentials",
            str(access / "device-0.json"),
        )
        try:
            untrusting = start(sanitized, *login, "--tls-ca", str(stranger))
            with pytest.raises(AssertionError, match="nothing wanted"):
                until(observer, lambda m: isinstance(m, Status), timeout=4)
            untrusting.send_signal(signal.SIGTERM)
            output = untrusting.communicate(timeout=10)[0].decode()
            assert "certificate verify failed" in output, output
            trusting = start(sanitized, *login, "--tls-ca", str(certs.ca))
            status = until(observer, lambda m: isinstance(m, Status) and m.state == "online")
            assert status.role == Role.device(DEVICE)
            trusting.send_signal(signal.SIGTERM)
            assert trusting.wait(timeout=10) == 0, trusting.stdout.read().decode()
        finally:
            observer.close()


def hostile_payloads(topics: Topics, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` fuzzed payloads (ddnn/ops/faults/hostile.py) per topic a device reads, made from
    its valid messages, and a few made by hand: a header claiming 4 billion elements, deep
    nesting, bad UTF-8, valid messages of other kinds, a stale tick, a misaddressed offload."""
    rng = random.Random(seed)
    now = time.time()
    me = Role.device(DEVICE)
    valid = {
        topics.tick: [Tick(sample=7, t=now)],
        topics.offload("cloud"): [Offload(sample=7, sources=[me], to="cloud")],
    }
    out = [(t, fuzzed(encode(rng.choice(v)), rng)) for t, v in valid.items() for _ in range(n)]
    by_hand = [
        b"\xdd\xff\xff\xff\xff",  # an array of 4 billion elements, in 5 bytes
        b"\xdf\xff\xff\xff\xff",  # a map of as many
        b"\x91" * 200 + b"\x00",  # nested 200 deep
        msgpack.packb({"v": 1, "kind": "tick", "sample": 1, "t": now, b"\xff": 1}),
        b"\x83\xa1v\x01\xa4kind\xa4tick\xa6sample\xa2\xff\xfe",  # a str that is not UTF-8
        msgpack.packb({"v": 1, "kind": "tick", "sample": True, "t": now}),
        msgpack.packb({"v": 1, "kind": "tick", "sample": 2**63, "t": now}),
        msgpack.packb({"v": 1, "kind": "tick", "sample": 1, "t": float("nan")}),
        msgpack.packb({"v": True, "kind": "tick", "sample": 1, "t": now}),
        encode(Tick(sample=1, t=now - 3600)),  # stale
        encode(Scores(sample=1, source=me, scores=bytes(12), t0=now)),
        encode(Status(role=me, state="online", t=now)),
    ]
    out += [(topics.tick, p) for p in by_hand]
    misaddressed = Offload(sample=7, sources=[me], to="edge")
    out += [(topics.offload("cloud"), encode(misaddressed)), (topics.tick, encode(misaddressed))]
    return out


def test_hostile_messages_are_refused_as_the_python_device_refuses_them(running, plain: Path):
    """Under AddressSanitizer and UBSan: nothing crashes it or leaks, every payload is
    counted under the reason the Python device gives it (the same fuzz, in-process), and it
    still answers a good tick afterwards."""
    proc, client = running
    topics = Topics("default", read_manifest(plain).model_version)
    payloads = hostile_payloads(topics, FUZZ)
    rig, python = device_rig(plain, DEVICE)
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
        python.receive(topic.replace(topics.root, python.topics.root), payload)
        time.sleep(0.0005)  # within the device's rate (4 per frame at 1,000 frames/s)
    good = Tick(sample=10**6, t=time.time())
    client.publish(topics.tick, encode(good))
    until(client, lambda m: isinstance(m, Scores) and m.sample == good.sample)
    proc.send_signal(signal.SIGTERM)
    last = until(client, lambda m: isinstance(m, Status) and m.state == "offline")
    output = proc.stdout.read().decode()
    assert proc.wait(timeout=10) == 0, output[-3000:]
    assert "Sanitizer" not in output, output[-3000:]
    assert INTERNAL_ERROR not in last.rejected
    assert last.counters["received"] == len(payloads) + 1
    assert Counter(last.rejected) == Counter(python.rejected), (last.rejected, python.rejected)
    assert sum(last.rejected.values()) >= len(payloads) // 2


@pytest.mark.parametrize("model", ["tiny", pytest.param("tiny_edge", marks=pytest.mark.slow)])
def test_live_with_c_devices_decides_every_sample_once_as_offline(
    model: str, request: pytest.FixtureRequest, tmp_path: Path
):
    """The whole live system with every device a C process (logging in with its account of
    the export, on a broker that checks them): each sample decided once, as offline; with
    edges too (the devices then answer the edges' offload requests)."""
    needs_c_tools()
    net, cfg, meta = load_model(request.getfixturevalue(model))
    prepared = prepare(net, cfg, meta, tmp_path, "c-live", camera=True)
    launch, options = c_devices(prepared, tmp_path / "c", cfg.model.n_devices)
    with (
        start_broker(access=prepared.access, grants=False) as broker,
        deployment(prepared, broker.settings(), tmp_path, extra=options, launch=launch) as running,
    ):
        ids, seconds, cpu = driven(running, 40, 8)
    figures = runtime_figures(
        running.driver.decisions, prepared.reference, 40, seconds, cpu, running.driver.repeats(ids)
    )
    assert figures["decisions_missing"] == figures["decisions_twice"] == 0, figures
    assert figures["mismatches"] == 0, figures
    assert all(code == 0 for code in running.codes.values()), running.codes
    assert figures["device_cpu_seconds_per_sample"] > 0


@pytest.mark.slow
def test_demo_with_c_devices_beside_python_ones(tiny: Path, tmp_path: Path):
    """`ddnn demo --device-runtime c`: the same samples with Python devices, then C ones."""
    needs_c_tools()
    report = run_demo(
        tiny,
        samples=40,
        devices=None,
        edge=False,
        external=None,
        window=8,
        decisions_path=None,
        cache=tmp_path,
        log=lambda text: None,
        device_runtime="c",
    )
    for figures in (report, *report["device_runtimes"].values()):
        assert figures["decisions_missing"] == 0 and figures["decisions_twice"] == 0, figures
        assert figures["mismatches"] == 0, figures
    assert report["decided"] == report["compared"] == 40
    assert report["clean_exits"], report
    c, python = report["device_runtimes"]["c"], report["device_runtimes"]["python"]
    assert set(c["cpu_seconds_per_sample"]) == set(python["cpu_seconds_per_sample"])
    assert c["device_cpu_seconds_per_sample"] > 0 and c["samples_per_second"] > 0
    assert np.isfinite(python["device_cpu_seconds_per_sample"])
