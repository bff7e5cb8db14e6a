"""`ddnn monitor`: the folding of statuses and decisions into one picture (fast, on messages
built here), and the command itself watching a live deployment with the observer's account."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
from rich.console import Console

from ddnn.cli.monitor import dashboard, target
from ddnn.core.manifest import read_manifest
from ddnn.core.roles import Role, deployment_roles
from ddnn.live.access import Credentials
from ddnn.live.broker.start import start_broker
from ddnn.live.memory import MemoryBus
from ddnn.live.service_cli import ServiceSetup, broker_settings
from ddnn.live.wire import Decision, Status, Tick, Topics, encode
from ddnn.nn.checkpoint import load_model
from ddnn.ops import monitor as monitor_mod
from ddnn.ops.deploy import deployment, prepare
from ddnn.ops.monitor import MAX_REASONS, SILENT_AFTER, Monitor, watch
from ddnn.ops.stats import percentiles
from tests.helpers import ddnn, run_without_torch

DEPLOYMENT, VERSION = "site", "v1"
TOPICS = Topics(DEPLOYMENT, VERSION)
START_WALL = 1500.0  # the Unix time the monitors of these tests start at (monotonic 0)


def status(role: str, state: str = "online", t: float = 1400.0, instance: str = "p1", **kw):
    message = Status(role=role, state=state, t=t, instance=instance, **kw)
    return TOPICS.status(Role(role)), encode(message)


def decision(sample: int, exit: str | None = "local", latency: float | None = 1.0, **kw):
    fields = {
        "sample": sample,
        "decided": True,
        "exit": exit,
        "latency_ms": latency,
        "devices": [0, 1],
        "bytes": {"device_scores": 24},
    }
    return TOPICS.decisions, encode(Decision(**(fields | kw)))


def bad_decision(**fields) -> bytes:
    """A decision payload with `fields` as they are, past what `Decision` would build."""
    good = {"v": 1, "kind": "decision", "sample": 9, "decided": True, "exit": "local"}
    return msgpack.packb(good | fields)


def watcher(**kw) -> Monitor:
    return Monitor(
        DEPLOYMENT, kw.pop("version", VERSION), started=0.0, started_wall=START_WALL, **kw
    )


def feed(m: Monitor, messages, now: float = 0.0) -> None:
    for topic, payload in messages:
        m.receive(topic, payload, now, START_WALL + now)


def test_decisions_leave_the_window_and_the_rate_counts_only_the_window():
    m = watcher(window=10.0)
    feed(m, (decision(k) for k in range(10)), now=1.0)
    feed(m, (decision(k) for k in range(10, 30)), now=8.0)
    d = m.snapshot(now=9.0)["decisions"]
    assert d["count"] == 30 and d["per_second"] == pytest.approx(30 / 9, abs=0.01)
    d = m.snapshot(now=11.5)["decisions"]  # those of second 1 are older than 10 s
    assert d["count"] == 20 and d["per_second"] == 2.0 and d["total"] == 30
    d = m.snapshot(now=30.0)["decisions"]
    assert d["count"] == 0 and d["per_second"] == 0.0
    assert d["exit_fraction"] == {} and d["latency_ms"] == {}
    assert d["bytes_per_device_per_sample"] is None


def test_exit_fractions_percentiles_bytes_and_endings():
    m = watcher()
    local = [decision(k, "local", float(k + 1)) for k in range(100)]
    cloud = [
        decision(100 + k, "cloud", 500.0 + k, bytes={"device_scores": 24, "device_features": 256})
        for k in range(19)
    ]
    abstained = decision(119, "cloud", 530.0, abstained=True, class_index=None)
    degraded = decision(120, "local", 3000.0, degraded=True, reason="the cloud did not answer")
    undecided = [
        decision(121 + k, None, 1000.0, decided=False, reason="no device answered", devices=[])
        for k in range(3)
    ]
    feed(m, [*local, *cloud, abstained, degraded, *undecided], now=1.0)
    d = m.snapshot(now=2.0)["decisions"]
    assert d["count"] == 124 and d["total"] == 124
    assert d["exit_fraction"] == {"local": round(101 / 121, 4), "cloud": round(20 / 121, 4)}
    assert sum(d["exit_fraction"].values()) == pytest.approx(1.0, abs=1e-3)
    assert d["latency_ms"]["local"] == percentiles([*range(1, 101), 3000.0])
    assert d["latency_ms"]["cloud"] == percentiles([500.0 + k for k in range(19)] + [530.0])
    expected = (101 * 12 + 19 * 140 + 12) / 121  # scores alone: 24 / 2; with maps: 280 / 2
    assert d["bytes_per_device_per_sample"] == round(expected, 2)
    assert (d["degraded"], d["undecided"], d["abstained"]) == (1, 3, 1)
    assert d["reasons"] == {
        "degraded": {"the cloud did not answer": 1},
        "undecided": {"no device answered": 3},
    }


def test_a_decision_that_comes_again_is_counted_as_repeated_or_twice_never_hidden():
    """The same decision delivered again (QoS 1) is `decisions_repeated`; another decision
    for a sample already decided is `decisions_twice`, the promise of one decision broken.
    Neither counts as a new decision, and the dashboard says both."""
    m = watcher()
    feed(m, [decision(1), decision(2)], now=1.0)
    feed(m, [decision(1), decision(1)], now=1.5)  # delivered again, the same
    feed(m, [decision(2, "cloud", 40.0), decision(2, degraded=True, reason="x")], now=2.0)
    d = m.snapshot(now=2.0)["decisions"]
    assert (d["total"], d["count"]) == (2, 2)
    assert (d["decisions_repeated"], d["decisions_twice"]) == (2, 2)
    assert d["exit_fraction"] == {"local": 1.0} and d["degraded"] == 0
    console = Console(width=200, record=True)
    console.print(dashboard(m.snapshot(now=2.0)))
    assert "delivered again 2, decided twice 2" in console.export_text()


def test_services_online_offline_silent_unseen_and_since_when():
    roles = [Role("device-0"), Role("device-1"), Role("aggregator")]
    m = watcher(roles=roles)
    counters = {"received": 7, "sent_scores": 5}
    feed(m, [status("device-0", counters=counters), status("aggregator")], now=0.1)  # retained
    s = m.snapshot(now=0.2)["services"]
    assert list(s) == ["device-0", "device-1", "aggregator"]
    assert s["device-0"]["state"] == "online" and s["device-0"]["since"] is None
    assert s["device-1"]["state"] == "unseen" and s["device-1"]["age_s"] is None
    # its last will: offline, no counters (the last ones seen stay)
    feed(m, [status("device-0", "offline", t=1600.0)], now=3.0)
    s = m.snapshot(now=3.0)["services"]["device-0"]
    assert s["state"] == "offline" and s["since"] == START_WALL + 3.0
    assert s["counters"] == counters
    # restarted: another process of the same role; counters summed over both
    feed(m, [status("device-0", t=1700.0, instance="p2", counters={"received": 1})], now=5.0)
    s = m.snapshot(now=5.0)["services"]["device-0"]
    assert (s["state"], s["since"], s["instances"]) == ("online", START_WALL + 5.0, 2)
    assert s["counters"] == {"received": 8, "sent_scores": 5}
    # a role first heard after the monitor started came online then
    feed(m, [status("cloud", t=START_WALL + 2.0)], now=2.0)
    assert m.snapshot(now=2.0)["services"]["cloud"]["since"] == START_WALL + 2.0
    # no status for longer than three status intervals: silent (a paused process)
    s = m.snapshot(now=0.1 + SILENT_AFTER + 0.5)["services"]["aggregator"]
    assert s["state"] == "silent" and s["age_s"] == pytest.approx(SILENT_AFTER + 0.5)


def test_rejections_per_service_and_reason():
    m = watcher()
    feed(
        m,
        [
            status("aggregator", rejected={"bad scores message": 3, "unknown device": 1}),
            status("cloud", rejected={"not msgpack": 2}, instance="c1"),
            status("cloud", rejected={"not msgpack": 5}, instance="c2"),
        ],
    )
    s = m.snapshot(now=1.0)["services"]
    assert s["aggregator"]["rejected"] == {"bad scores message": 3, "unknown device": 1}
    assert s["cloud"]["rejected"] == {"not msgpack": 7}  # two replicas
    assert s["cloud"]["instances"] == 2


def test_malformed_messages_are_counted_and_never_stop_it():
    m = watcher()
    hostile = "[bold red]x\x1b[2J" + "y" * 400  # within the wire's 512, over MAX_NAME
    feed(
        m,
        [
            (TOPICS.decisions, b"\xc1 not msgpack"),
            (TOPICS.decisions, msgpack.packb([1, 2])),
            (TOPICS.decisions, msgpack.packb({"v": 2, "kind": "decision"})),
            (TOPICS.decisions, encode(Tick(sample=1, t=1.0))),  # a tick on the decisions topic
            (TOPICS.status(Role("device-0")), status("device-1")[1]),  # another's status
            (TOPICS.decisions, msgpack.packb({"v": 1, "kind": "decision", "sample": -1})),
            # refused by the wire: a NaN latency, an infinite one, a negative byte count
            (TOPICS.decisions, bad_decision(latency_ms=float("nan"))),
            (TOPICS.decisions, bad_decision(latency_ms=float("inf"))),
            (TOPICS.decisions, bad_decision(bytes={"device_scores": -5})),
            decision(1),
            decision(2, latency=None),  # no latency: left out of the percentiles
            decision(3, degraded=True, reason=hostile),
        ],
    )
    snap = m.snapshot(now=1.0)
    assert snap["malformed"] == {
        "not msgpack": 1,
        "not a msgpack map": 1,
        "unsupported schema version": 1,
        "a message of another kind than its topic's": 1,
        "a sender other than its topic's role": 1,
        "bad decision message": 4,
    }
    d = snap["decisions"]
    assert d["count"] == 3 and d["latency_ms"]["local"] == {"p50": 1.0, "p99": 1.0}
    (reason,) = d["reasons"]["degraded"]
    assert reason.startswith("[bold red]x?[2Jyyy") and len(reason) == monitor_mod.MAX_NAME
    json.dumps(snap, allow_nan=False)  # pure JSON, whatever came


def test_memory_stays_bounded_whatever_arrives(monkeypatch):
    monkeypatch.setattr(monitor_mod, "MAX_KEPT", 100)
    monkeypatch.setattr(monitor_mod, "MAX_ROLES", 8)
    m = watcher(window=60.0)
    feed(m, (status(f"device-{i}") for i in range(20)))
    for k in range(1000):  # a flood: 1000 decisions, each with a reason of its own
        feed(m, [decision(k, degraded=True, reason=f"reason {k}")], now=k / 100)
    feed(m, [decision(999, degraded=True, reason="reason 999")] * 5, now=10.0)  # again
    snap = m.snapshot(now=10.0)
    assert len(snap["services"]) == 8 and snap["malformed"] == {"a role beyond the limit": 12}
    assert snap["services"]["device-0"]["instances"] == 1
    assert len(m.kept) == 100 and len(m.reasons) == MAX_REASONS
    d = snap["decisions"]
    assert d["capped"] and d["count"] == 100 and d["total"] == 1000
    assert d["decisions_repeated"] == 5 and d["decisions_twice"] == 0
    assert d["per_second"] == pytest.approx(100.0, rel=0.02)  # over the span the 100 cover
    assert sum(d["reasons"]["degraded"].values()) == 100
    assert set(d["reasons"]["degraded"]) == {"other"}  # the first 32 are no longer kept
    m = watcher()
    many = {f"counter {i}": i for i in range(256)}
    feed(m, (status("cloud", instance=f"p{i}") for i in range(20)))
    assert m.snapshot(now=1.0)["services"]["cloud"]["instances"] == monitor_mod.MAX_INSTANCES
    feed(m, [status("aggregator", counters=many, rejected=many)])
    aggregator = m.snapshot(now=1.0)["services"]["aggregator"]
    assert len(aggregator["counters"]) == len(aggregator["rejected"]) == monitor_mod.MAX_NAMES
    assert aggregator["rejected"]["counter 255"] == 255  # the largest are kept


def test_every_model_version_of_the_deployment_when_none_is_named():
    m = watcher(version=None)
    assert m.filters() == ["ddnn/site/+/status/+", "ddnn/site/+/decisions"]
    for version in ("v1", "v2"):
        topics = Topics(DEPLOYMENT, version)
        m.receive(topics.decisions, decision(1 if version == "v1" else 2)[1], 0.0, START_WALL)
    for k in range(10):
        m.receive(f"ddnn/site/x{k}/decisions", decision(10 + k)[1], 0.0, START_WALL)
    snap = m.snapshot(now=1.0)
    assert snap["model_versions"][:2] == ["v1", "v2"]
    assert len(snap["model_versions"]) == monitor_mod.MAX_VERSIONS
    assert snap["malformed"] == {"a model version beyond the limit": 4}


def test_watch_reads_a_transport_and_publishes_nothing():
    bus = MemoryBus()
    m = Monitor(DEPLOYMENT, VERSION)

    class ReadOnly:
        def __init__(self, inner):
            self.inner = inner
            self.dropped = 0

        def get(self, timeout):
            return self.inner.get(timeout)

        def publish(self, *args, **kwargs):
            raise AssertionError("the monitor published")

    inner = bus.client("monitor")
    for topic_filter in m.filters():
        inner.subscribe(topic_filter)
    inner.connect()
    service = bus.client("aggregator")
    service.connect()
    service.publish(*status("aggregator"), retain=True)
    for k in range(5):
        service.publish(*decision(k))
    shown: list[dict] = []
    last = watch(ReadOnly(inner), m, seconds=0.35, every=0.1, show=shown.append)
    assert len(shown) >= 2 and last["services"]["aggregator"]["state"] == "online"
    assert last["decisions"]["total"] == 5


def test_dashboard_shows_what_hostile_publishers_write_as_written():
    m = watcher()
    hostile = "[bold red]boom[/] \x1b[2J"
    feed(
        m, [status("aggregator", rejected={hostile: 4}), decision(1, reason=hostile, degraded=True)]
    )
    feed(m, [(TOPICS.decisions, b"junk")])
    console = Console(record=True, width=200, color_system=None)
    console.print(dashboard(m.snapshot(now=1.0)))
    text = console.export_text()
    assert "[bold red]boom[/] ?[2J" in text and "\x1b" not in text
    for line in ("services", "exits", "aggregator", "not msgpack", "degraded 1, undecided 0"):
        assert line in text


def test_model_versions_that_disagree_are_refused(tmp_path: Path):
    creds = tmp_path / "observer.json"
    login = Credentials(
        username="site/observer", password="x", deployment="site", model_version="v1"
    )
    creds.write_text(login.model_dump_json())
    proc = ddnn(
        "monitor", "--credentials", str(creds), "--deployment", "site", "--model-version", "v2",
        "--json", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert "model versions disagree: --credentials v1, --model-version v2" in proc.stderr


def test_an_export_gives_the_model_version_the_roles_and_the_observers_login(plain: Path):
    """`--artifacts`: the observer's credentials file of `--deployment` in it by default, as
    the services find theirs; every role of its model is expected (shown unseen till heard)."""
    manifest = read_manifest(plain)
    setup = ServiceSetup(broker_settings("mqtt://127.0.0.1:1"), "default")
    settings, version, roles = target(setup, plain, None)
    assert settings.username == "default/observer" and settings.password
    assert version == manifest.model_version
    assert roles == deployment_roles(manifest.ddnn_config().model)
    assert target(setup, None, None) == (setup.broker, None, [])  # anonymous, any version


class Enough(Exception):
    """Stops the driver's thread."""


@pytest.mark.slow  # 30 s of processes; the default run keeps `watch` on the in-memory bus
def test_monitor_json_watches_a_live_deployment_with_the_observers_account(tmp_path, tiny):
    """A real broker enforcing the accounts, real service processes, a driver ticking 40
    samples a second; `ddnn monitor --json` as a subprocess with the observer's credentials
    file sees every service online and the decisions the driver saw in the same seconds."""
    net, cfg, meta = load_model(tiny)
    prepared = prepare(net, cfg, meta, tmp_path, "watched")
    stop = threading.Event()
    offset = time.time() - time.monotonic()

    def before(k: int) -> None:
        if stop.is_set():
            raise Enough

    def drive() -> None:
        with contextlib.suppress(Enough):
            running.driver.run(range(10**5), rate=40, before=before)

    with (
        start_broker(access=prepared.access) as broker,
        deployment(prepared, broker.settings(), tmp_path) as running,
    ):
        thread = threading.Thread(target=drive)
        thread.start()
        try:
            proc = subprocess.run(
                [
                    sys.executable, "-m", "ddnn", "monitor", "--json", "--seconds", "3",
                    "--broker", broker.url, "--mqtt", broker.protocol, "--deployment", "watched",
                    "--credentials", str(prepared.access / "observer.json"),
                ],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            stop.set()
            thread.join()
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["model_versions"] == [prepared.manifest.model_version]
    assert {role: s["state"] for role, s in snap["services"].items()} == dict.fromkeys(
        running.roles, "online"
    )
    assert snap["services"]["aggregator"]["counters"]["received"] > 0
    assert snap["malformed"] == {} and snap["dropped"] == 0
    # what the driver saw decided while the monitor listened (the same messages, the same
    # broker: the two differ by the few that crossed either end of that stretch)
    start, end = snap["at"] - snap["listened_s"], snap["at"]
    driver = running.driver
    seen = [d for k, d in driver.decisions.items() if start <= driver.decided_at[k] + offset <= end]
    d = snap["decisions"]
    assert 0 < d["total"] <= len(driver.decisions) and d["count"] == d["total"]
    assert abs(d["total"] - len(seen)) <= max(3, 0.05 * len(seen))
    assert d["per_second"] == pytest.approx(40, rel=0.25)
    assert sum(d["exit_fraction"].values()) == pytest.approx(1.0, abs=1e-3)
    assert set(d["exit_fraction"]) <= {"local", "cloud"}
    local = sum(s.exit == "local" for s in seen) / len(seen)
    assert d["exit_fraction"].get("local", 0.0) == pytest.approx(local, abs=0.05)
    for tier, figures in d["latency_ms"].items():
        assert 0 < figures["p50"] <= figures["p99"], tier
    assert d["bytes_per_device_per_sample"] >= 12.0  # at least the class scores
    assert (d["degraded"], d["undecided"]) == (0, 0)
    assert (d["decisions_repeated"], d["decisions_twice"]) == (0, 0)


def test_the_monitor_runs_without_pytorch():
    """An operator's machine needs no PyTorch to watch a deployment."""
    proc = run_without_torch(
        """
        import sys
        from ddnn.cli import main
        sys.argv = ["ddnn", "monitor", "--help"]
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
        print("torch" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "False"
