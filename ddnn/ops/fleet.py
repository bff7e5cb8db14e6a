"""A whole deployment on one machine: its service processes, and the driver that feeds it.

`Fleet` starts each role as an operator would (`python -m ddnn <role> ...`), and kills,
pauses or restarts them for fault injection. `Driver` is one MQTT client that triggers
samples with `tick` messages, collects decisions and statuses, and re-ticks a sample that
got no decision in time (after a lost tick, or an aggregator that died holding it): a
restarted aggregator then decides it, and one that already did drops the repeat as late.
`Reference` is the offline truth both compare the live decisions with. `ddnn demo` and
`ddnn faults` are built from these three.

A decision that comes again is counted, never hidden: the same content again (a QoS 1
redelivery) as `decisions_repeated`, another content for a decided sample (a sample decided
twice: the design's promise broken) as `decisions_twice`, both among the driver's anomalies
and per sample (`Driver.repeats`), and `summarize` reports them beside `decisions_missing`.
"""

from __future__ import annotations

import ctypes
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ddnn.core.errors import DDNNError
from ddnn.core.roles import AGGREGATOR, Role
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.wire import Decision, Status, Tick, Topics, WireError, decode, encode
from ddnn.ops.stats import bytes_per_device, percentiles

START_TIMEOUT = 120.0  # seconds for services to come online (each imports torch; 2 cores)
CHECK_EVERY = 0.5  # seconds between the driver's checks that every process still runs
SETTLE = 1.0  # seconds from every service online to the first listened-for wall-clock slot
LAST_WAIT = 5.0  # seconds after the last wall-clock slot for its decision (past any deadline)


try:  # POSIX's per-process CPU clock, from the C library (none on Windows)
    _cpu_clock_of = ctypes.CDLL(None).clock_getcpuclockid
except (AttributeError, OSError, TypeError):
    _cpu_clock_of = None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds process `pid` has used so far, to the nanosecond (None
    where the platform has no per-process CPU clock, or once the process is gone). /proc's
    counts tick every 10 ms, more than a light process such as rumqttd uses in a bench run."""
    clock = ctypes.c_int()
    if _cpu_clock_of is None or _cpu_clock_of(pid, ctypes.byref(clock)) != 0:
        return None
    try:
        return time.clock_gettime(clock.value)
    except OSError:
        return None


class CpuClock:
    """The CPU seconds each of some processes uses from `start` to `stop` (`cpu_seconds`),
    per decided sample: what a service costs, compared across runs on one machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.after: dict[str, float | None] = {}

    def stop(self) -> CpuClock:
        """Read the clocks again (while the processes still run)."""
        self.after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def per_sample(self, samples: int) -> dict[str, float]:
        """Each process's CPU seconds between `start` and `stop` over `samples` (at least 1);
        processes whose clock could not be read are left out."""
        return {
            name: round((after - was) / max(1, samples), 6)
            for name, was in self.before.items()
            if was is not None and (after := self.after.get(name)) is not None
        }


class Memory(NamedTuple):
    """A process's resident memory, MB: all of it, and its own (anonymous: heap and stacks,
    not the shared libraries mapped from disk, such as PyTorch's ~75 MB, which the kernel
    can drop and read again and every process of the machine shares)."""

    rss: float
    anon: float


# How a role's process is started: the command line up to the `ddnn` command's arguments.
Launch = Callable[[Role], list[str]]


def python_m_ddnn(role: Role) -> list[str]:
    """Every role as an operator starts it: `python -m ddnn`."""
    return [sys.executable, "-m", "ddnn"]


def replaying(roles: Iterable[Role], spec: str) -> dict[Role, list[str]]:
    """The options (for `Fleet`'s `extra`) that make every device among `roles` replay the
    test part of `spec`: never the device's default, so the frames are those the driver's
    labels and the offline reference describe."""
    return {role: ["--source", spec] for role in roles if role.tier == "device"}


def on_wall_clock(roles: Iterable[Role], fps: float) -> dict[Role, list[str]]:
    """The options that put a deployment on the wall clock: every device free-running at
    `fps` (sample k is the k-th 1/fps slot of Unix time, as cameras on synchronized clocks
    agree on frames), the aggregator starting a sample on its first scores. No ticks."""
    options = {r: ["--clock", "wall", "--fps", f"{fps:g}"] for r in roles if r.tier == "device"}
    return options | {AGGREGATOR: ["--clock", "wall"]}


def replica_name(role: Role, replica: int) -> str:
    """A fleet's name for process `replica` of `role`: the role itself for the first, as for
    every role that runs one process; `cloud.1`, `cloud.2`, ... for more replicas."""
    return role if replica == 0 else f"{role}.{replica}"


class Fleet:
    """The service processes of one deployment; `common` are the options all of them take
    (artifacts, broker, deployment), `extra` the ones of a single role, `launch` how a role's
    process is started (default: `python -m ddnn`)."""

    def __init__(
        self,
        common: list[str],
        logs: Path,
        extra: dict[Role, list[str]] | None = None,
        launch: Launch | None = None,
    ) -> None:
        self.common = common
        self.logs = logs
        self.extra = extra or {}
        self.launch = launch or python_m_ddnn
        self.argv: dict[str, list[str]] = {}  # process name -> its command line
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: Counter[str] = Counter()
        # processes (by name, one entry each) that exited without being killed or stopped
        # on purpose: a crash, a refused start (`reap`); `_ended` holds those accounted for
        self.deaths: list[str] = []
        self._ended: set[subprocess.Popen] = set()

    def start(self, role: Role, replica: int = 0) -> str:
        """Start process `replica` of `role` (more than one: replicas of the cloud); its name
        in this fleet (`replica_name`), which `kill`, `restart` and the others take."""
        argv = [*self.launch(role), role.tier, *self.common, *self.extra.get(role, [])]
        if role.index is not None:
            argv += ["--id", str(role.index)]
        name = replica_name(role, replica)
        self.argv[name] = argv
        self._spawn(name)
        return name

    def _spawn(self, name: str) -> None:
        self.reap()  # a process that died by itself is counted before it is replaced
        log = (self.logs / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(self.argv[name], stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, the broker publishes the role's last will."""
        self.reap()  # one that had died already died by itself
        self._ended.add(self.procs[name])
        self.procs[name].kill()
        self.procs[name].wait()

    def restart(self, name: str) -> None:
        self.restarts[name] += 1
        self._spawn(name)

    def pause(self, name: str, seconds: float) -> None:
        """SIGSTOP now, SIGCONT after `seconds` (without waiting): a straggler whose
        messages come late."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGSTOP)
        threading.Timer(seconds, proc.send_signal, args=(signal.SIGCONT,)).start()

    def memory_mb(self, name: str) -> Memory | None:
        """The resident memory of process `name` in MB (Linux; None elsewhere or dead)."""
        try:
            status = Path(f"/proc/{self.procs[name].pid}/status").read_text()
        except OSError:
            return None
        kb = dict(
            line.split()[:2] for line in status.splitlines() if line.startswith(("Vm", "Rss"))
        )
        if "VmRSS:" not in kb or "RssAnon:" not in kb:
            return None
        return Memory(round(int(kb["VmRSS:"]) / 1024, 1), round(int(kb["RssAnon:"]) / 1024, 1))

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def reap(self) -> list[str]:
        """Note every process that exited without `kill` or `stop` ending it (a crash, a
        refused start) in `deaths`, once each; `deaths`, which also holds the ones a restart
        replaced since."""
        for name, proc in self.procs.items():
            if proc not in self._ended and proc.poll() is not None:
                self._ended.add(proc)
                self.deaths.append(name)
        return self.deaths

    def check(self, expected_dead: Iterable[str] = ()) -> None:
        """Raise if a process that should run has exited (a crash, a refused start)."""
        self.reap()
        for name, proc in self.procs.items():
            if name not in expected_dead and proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text().strip().splitlines()[-3:]
                raise DDNNError(
                    f"the {name} process exited ({proc.returncode}): {' | '.join(tail)}"
                )

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to all, then their exit codes (0 is a clean shutdown)."""
        self.reap()
        self._ended.update(self.procs.values())
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


class Driver:
    """Ticks samples and collects what comes back, through one MQTT client."""

    def __init__(
        self, settings: BrokerSettings, topics: Topics, fleet: Fleet, retry_after: float = 5.0
    ) -> None:
        self.topics = topics
        self.fleet = fleet
        self.retry_after = retry_after
        # unique per driver: two with one id (two sites driven from one process) would take
        # the connection from each other in turn
        client_id = f"ddnn-driver-{os.getpid()}-{secrets.token_hex(4)}"
        self.client = MqttClient(settings, client_id=client_id)
        self.client.start()
        self.client.subscribe(topics.all_status)
        self.client.subscribe(topics.decisions)
        self.client.connect()
        self.decisions: dict[int, Decision] = {}
        self.decided_at: dict[int, float] = {}  # monotonic
        self.ticked_at: dict[int, float] = {}  # monotonic, of the latest tick
        self.status: dict[Role, Status] = {}
        self.instances: dict[str, Status] = {}  # the latest status of each process
        self.events: list[tuple[float, Role, str]] = []  # (monotonic, role, state)
        self.anomalies: Counter[str] = Counter()
        self.ticks = 0  # tick messages published, repeats included
        # per sample: decisions that came again with the first one's content, and with another
        self.repeated: Counter[int] = Counter()
        self.twice: Counter[int] = Counter()
        self.dead: set[str] = set()  # processes killed on purpose, not to be reported as crashed

    def close(self) -> None:
        self.client.close()

    def pump(self, timeout: float) -> int | None:
        """Take one message (waiting at most `timeout`) and file it; the sample of a new
        decision, if it was one."""
        item = self.client.get(timeout=timeout)
        if item is None:
            return None
        try:
            m = decode(item[1])
        except WireError:
            self.anomalies["bad_payload"] += 1
            return None
        if isinstance(m, Status):
            previous = self.status.get(m.role)
            if previous is None or previous.state != m.state:
                self.events.append((time.monotonic(), m.role, m.state))
            self.status[m.role] = m
            self.instances[m.instance] = m
        elif isinstance(m, Decision):
            if m.sample in self.decisions:
                same = self.decisions[m.sample] == m
                (self.repeated if same else self.twice)[m.sample] += 1
                self.anomalies["decisions_repeated" if same else "decisions_twice"] += 1
                return None
            self.decisions[m.sample] = m
            self.decided_at[m.sample] = time.monotonic()
            return m.sample
        return None

    def repeats(self, samples: Iterable[int]) -> dict[str, int]:
        """Of `samples`: decisions that came again the same (`decisions_repeated`) and with
        another content (`decisions_twice`), as `summarize` takes them."""
        wanted = set(samples)
        return {
            "decisions_twice": sum(n for k, n in self.twice.items() if k in wanted),
            "decisions_repeated": sum(n for k, n in self.repeated.items() if k in wanted),
        }

    def online(self) -> set[Role]:
        return {role for role, s in self.status.items() if s.state == "online"}

    def replicas_online(self, role: Role) -> int:
        """Processes of `role` online: one, or the cloud's replicas, which share its status
        topic (so `online()`, by the latest status there, cannot count them)."""
        return sum(s.role == role and s.state == "online" for s in self.instances.values())

    def wait_online(
        self,
        roles: Iterable[Role],
        timeout: float = START_TIMEOUT,
        replicas: dict[Role, int] | None = None,
    ) -> None:
        """Wait until every one of `roles` is online, with `replicas[role]` processes."""
        wanted, counts = set(roles), replicas or {}
        deadline = time.monotonic() + timeout
        while not wanted <= self.online() or any(
            self.replicas_online(r) < n for r, n in counts.items()
        ):
            self.fleet.check(self.dead)
            if time.monotonic() > deadline:
                missing = sorted(wanted - self.online())
                missing += [f"{r} x{n}" for r, n in counts.items() if self.replicas_online(r) < n]
                raise DDNNError(f"services not online after {timeout:g} s: {missing}")
            self.pump(0.2)

    def tick(self, sample: int) -> None:
        """Start `sample`, at QoS 0: at QoS 1 the tick's acknowledgements (one from each of
        the devices and the aggregator, one to the driver) were a third of a sample's
        packets, and the retry in `run` already covers a lost tick as it covers a lost
        decision."""
        self.client.publish(self.topics.tick, encode(Tick(sample=sample, t=time.time())), qos=0)
        self.ticks += 1
        self.ticked_at[sample] = time.monotonic()

    def listen(self, fps: float, count: int) -> range:
        """For a deployment on the wall clock (`on_wall_clock`): the ids of `count`
        consecutive slots at `fps` from SETTLE seconds from now, once each is decided or
        LAST_WAIT seconds have passed after the last."""
        first = math.ceil((time.time() + SETTLE) * fps)
        samples = range(first, first + count)
        waiting, end = set(samples), samples.stop / fps + LAST_WAIT
        checked = time.monotonic()
        while waiting and time.time() < end:
            waiting.discard(self.pump(0.05))
            if time.monotonic() - checked > CHECK_EVERY:
                checked = time.monotonic()
                self.fleet.check(self.dead)
        return samples

    def run(
        self,
        samples: Iterable[int],
        rate: float | None = None,
        window: int = 16,
        before: Callable[[int], None] | None = None,
        stall: float = 20.0,
    ) -> None:
        """Tick `samples` in order (at `rate` per second, or as fast as `window` samples in
        flight allow), calling `before(k)` ahead of tick k; re-tick samples still undecided
        after `retry_after`; return once all are decided or nothing came for `stall` s.
        Every step costs the same however many samples were ticked before (the demo's and
        the benches' driver must not be what limits them)."""
        todo = deque(k for k in samples if k not in self.decisions)
        open_: dict[int, None] = {}  # ticked, undecided, oldest tick first
        next_at = last = checked = time.monotonic()
        while True:
            now = time.monotonic()
            if todo and len(open_) < window and (rate is None or now >= next_at):
                k = todo.popleft()
                if before is not None:
                    before(k)
                    last = max(last, time.monotonic())  # an action's time is no stall
                self.tick(k)
                open_[k] = None
                next_at = max(next_at + (1.0 / rate if rate else 0.0), time.monotonic() - 1.0)
                continue
            if not todo and not open_:
                return
            while open_ and now - self.ticked_at[oldest := next(iter(open_))] > self.retry_after:
                self.anomalies["retick"] += 1
                self.tick(oldest)
                open_[oldest] = open_.pop(oldest)  # now the newest tick
            # wait for a message, but when paced not past the next tick
            wait = 0.2 if not todo else 0.02 if rate is None else min(0.02, next_at - now)
            decided = self.pump(max(0.0, wait))
            if decided is not None:
                open_.pop(decided, None)
                last = time.monotonic()
            elif time.monotonic() - last > stall:
                self.anomalies["stalled"] += 1
                return
            if now - checked > CHECK_EVERY:
                checked = now
                self.fleet.check(self.dead)


def summarize(
    decisions: dict[int, Decision],
    labels: np.ndarray,
    samples: int,
    seconds: float,
    decisions_twice: int = 0,
    decisions_repeated: int = 0,
) -> dict[str, Any]:
    """What `samples` ticked samples came to: `decisions` holds theirs by sample id (the
    test part's `labels` cycle with the sample id), `seconds` the time they took;
    `decisions_twice` and `decisions_repeated`: how many of their decisions came again with
    another content, and the same (`Driver.repeats`), reported beside `decisions_missing`
    (ticked, no decision), so that a broken exactly-once shows in every summary."""
    decided = [d for d in decisions.values() if d.decided]
    tiers = ("local", "edge", "cloud")
    by_exit = Counter(d.exit for d in decided if not d.abstained)
    right = sum(d.class_index == labels[d.sample % len(labels)] for d in decided)
    per_device = [b for d in decided if (b := bytes_per_device(d)) is not None]
    return {
        "samples": samples,
        "decided": len(decided),
        "undecided": sum(not d.decided for d in decisions.values()),
        "missing": samples - len(decisions),
        "decisions_missing": samples - len(decisions),
        "decisions_twice": decisions_twice,
        "decisions_repeated": decisions_repeated,
        "degraded": sum(d.degraded for d in decided),
        # the exit-placement paper's drop: answered no class
        "abstained": sum(d.abstained for d in decided),
        "accuracy": round(100.0 * right / len(decided), 2) if decided else None,
        "exit_fraction": {t: round(100.0 * by_exit[t] / max(1, len(decided)), 2) for t in tiers},
        "bytes_per_device": round(float(np.mean(per_device)), 2) if per_device else None,
        "latency_ms": {
            t: percentiles(
                [d.latency_ms for d in decided if d.exit == t and d.latency_ms is not None]
            )
            for t in tiers
            if by_exit[t]
        },
        "throughput": round(len(decisions) / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 2),
    }


class Reference:
    """Offline decisions of an exported model on the test part of a data set, for any set of
    present devices: what `ddnn eval --missing ...` computes. `data` is a SPEC (default: the
    data the model was trained on); `spec` is then what the devices must replay (`--source`),
    so that live decisions are scored against the labels of the frames the devices saw.
    `camera`: on the frames rounded to uint8 (`MultiViewData.as_camera_frames`), the frames
    C devices replay (devices/c_device.py), and so every device beside them."""

    def __init__(self, artifacts: Path, data: str | None = None, camera: bool = False) -> None:
        from ddnn.data import absolute_spec, trained_on
        from ddnn.nn.evaluate import load_for_eval, model_exit_points

        self.model, self.cfg, meta, self.test = load_for_eval(artifacts, data, part="test")
        self.camera = camera  # decided on uint8 frames, as C devices replay them
        if camera:
            self.test = self.test.as_camera_frames()
        self.spec = absolute_spec(data or trained_on(meta)[0])
        self.points = model_exit_points(self.model, self.cfg)
        self.labels = self.test.labels
        self.decide = cache(self._decide)

    def _decide(self, devices: tuple[int, ...]) -> tuple[list[int | None], list[str]]:
        """Each test sample's class (None where it abstained) and exit."""
        from ddnn.core.exits import cascade
        from ddnn.nn.evaluate import presence_mask, run_model

        n = self.cfg.model.n_devices
        missing = [d for d in range(n) if d not in devices]
        outputs = run_model(self.model, self.test, presence_mask(len(self.test), n, missing))
        d = cascade(self.points, outputs.inputs)
        classes = [None if a else int(k) for k, a in zip(d.predictions, d.abstained, strict=True)]
        return classes, [self.points[e].name for e in d.exit_index]

    def accuracy(self, devices: tuple[int, ...]) -> float:
        """The share of the test part answered right (an abstention is not right), in %."""
        classes, _ = self.decide(devices)
        right = sum(k == y for k, y in zip(classes, self.labels, strict=True))
        return round(100.0 * right / len(self.labels), 2)

    def compare(self, decisions: Iterable[Decision]) -> dict[str, Any]:
        """Live decisions against the offline ones with the same devices present (sample k is
        row k mod the test part's length): how many were compared, how many differ in class
        or exit, and the offline accuracy on those samples. Undecided and degraded decisions,
        and those whose devices changed between tiers, have no single offline counterpart."""
        n = len(self.labels)
        compared = mismatches = right = 0
        for d in decisions:
            if not d.decided or d.degraded:
                continue
            if d.upper_devices is not None and d.upper_devices != d.devices:
                continue
            classes, exits = self.decide(tuple(d.devices))
            row = d.sample % n
            compared += 1
            mismatches += (classes[row], exits[row]) != (d.class_index, d.exit)
            right += int(classes[row] == self.labels[row])
        return {
            "offline_accuracy": round(100.0 * right / compared, 2) if compared else None,
            "compared": compared,
            "mismatches": mismatches,
        }
