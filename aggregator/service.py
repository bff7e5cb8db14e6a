"""`ddnn aggregator`: the local aggregator, which holds every sample's state to its one decision.

Per sample: collect the class scores of the live devices until all arrived or the score
deadline passed, fuse what arrived and apply the local exit; if not confident, have the
devices' feature maps sent to their edge (or the cloud), then the edges' to the cloud. Every
exit decision is taken here, so that every sample ends in exactly one decision message
(degraded when a tier missed its deadline, undecided when no device answered); late or
duplicate messages are counted and dropped, and decided ids outlive a restart
(aggregator/ledger.py). Bounded: at most `MAX_PENDING` samples wait at once. For a replicated
cloud it gathers the maps itself and sends them as one `job`, again if unanswered.

Design: docs/design/aggregator.md (deadlines, exactly once, silent devices, the cloud's jobs).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aggregator.awaited import SILENT_AFTER, Awaited
from aggregator.ledger import Ledger, lock_state
from aggregator.outbox import Durability, Outbox
from aggregator.replicas import Gathering, JobMaps
from aggregator.weights import ExitWeights
from ddnn.core.config import DDNNConfig
from ddnn.core.errors import DDNNError
from ddnn.core.exits import ExitInputs, ExitPoint, exit_points, normalized_entropy, step
from ddnn.core.manifest import Manifest
from ddnn.core.roles import AGGREGATOR, CLOUD, Role
from ddnn.live.bounds import ScoreBounds
from ddnn.live.service import Broker, Rejected, Service, check_fresh, handles
from ddnn.live.transport import Receipt
from ddnn.live.wire import (
    Decision,
    Features,
    Job,
    Offload,
    Scores,
    Status,
    Tick,
    encode,
)

# Ranges of decided sample ids remembered (one per run of consecutive ids), to drop their
# late messages and never decide one twice: aggregator/ledger.py.
DECIDED_RANGES = 65536
RESTARTED = "undecided: the aggregator restarted while the sample was open"
FAILED = "undecided: the aggregator failed on this sample (a bug: see its log)"
MAX_PENDING = 10_000  # samples waiting at once; ~100 s of 6 cameras at 100 fps
STOP_WAIT = 1.0  # seconds a stopping aggregator waits for the broker to take its decisions
# How long a starting aggregator waits for another one it sees online to go offline before it
# refuses to start: a broker that lags (an amqtt under a flood was 5,000 messages behind)
# still holds the "online" of the one just stopped or killed.
RIVAL_WAIT = 30.0


@dataclass
class Deadlines:
    """Seconds each stage waits: for the devices' scores, and for an upper tier's answer
    (its own wait for feature maps included); with a replicated cloud, for the cloud's
    feature maps here, and for a job's answer before it is sent again."""

    scores: float = 1.0
    edge: float = 2.0
    cloud: float = 3.0
    gather: float = 1.0
    resend: float = 0.5


class Stage(Enum):
    """What a pending sample waits for."""

    SCORES = "the devices' class scores"
    EDGE = "the edges' answers"
    GATHER = "the cloud's inputs' maps, gathered here for a replicated cloud"
    CLOUD = "the cloud's answer"


@dataclass
class Pending:
    sample: int
    t0: float  # capture time (Unix), from the tick or the first scores
    stage: Stage
    deadline: float  # monotonic: of the stage, or of a job's resending
    scores: dict[int, np.ndarray] = field(default_factory=dict)  # device -> class scores
    edge_scores: dict[int, np.ndarray] = field(default_factory=dict)  # edge -> class scores
    devices: list[int] = field(default_factory=list)  # devices that took part
    best: tuple[str, np.ndarray] | None = None  # (exit, probabilities) of the highest tier so far
    bytes: dict[str, int] = field(default_factory=dict)
    upper_devices: set[int] = field(default_factory=set)  # whose features reached edge/cloud
    gathering: Gathering | None = None  # for a replicated cloud (aggregator/replicas.py)
    opener: int | None = None  # --clock wall: the device whose scores opened it


class AggregatorService(Service):
    role = AGGREGATOR

    def __init__(
        self,
        manifest: Manifest,
        weights: ExitWeights,
        broker: Broker,
        deployment: str,
        deadlines: Deadlines | None = None,
        clock: str = "tick",
        ledger: Path | None = None,
        replicated_cloud: bool = False,
        durability: Durability = Durability.none,
        rival_wait: float = RIVAL_WAIT,
    ) -> None:
        super().__init__(manifest, broker, deployment)
        self.clock = clock  # "tick": only ticked samples exist; "wall": any sample id may
        cfg: DDNNConfig = self.config
        if "local" not in weights.fusions:
            raise DDNNError("a live deployment needs a local exit (Fig. 2 (b), (c), (e), (f))")
        self.cfg = cfg
        self.fusions = weights.fusions
        self.bounds = ScoreBounds.of(manifest)  # each sender's largest |score|
        points = exit_points(cfg, cfg.model.exits, weights.routers)
        self.points: dict[str, ExitPoint] = {p.name: p for p in points}
        self.last_exit = cfg.model.exits[-1]
        self.n_devices = cfg.model.n_devices
        self.groups = cfg.model.edge.groups if cfg.model.edge is not None else []
        self.deadlines = deadlines or Deadlines()
        devices = range(self.n_devices)
        self.awaited = Awaited({self.topics.scores(Role.device(d)): d for d in devices})
        self.pending: dict[int, Pending] = {}
        self.deadlines_due: list[tuple[float, int]] = []  # heap of (deadline, sample)
        # decided ids, in the file `ledger` too (None: memory only, as in-process tests),
        # and the decisions on their way to the broker, journaled beside it
        self.state_lock = lock_state(ledger.with_suffix(".lock")) if ledger else None
        self.decided = Ledger(ledger, DECIDED_RANGES)
        journal = ledger.with_suffix(".outbox") if ledger else None
        self.outbox = Outbox(journal, durability, self._send_decision, self.decided)
        self.opened_by: Counter[int] = Counter()  # --clock wall: samples each device opened
        self.rival: str | None = None  # another aggregator of this deployment, seen online
        self.rival_wait = rival_wait
        self.replicated = replicated_cloud
        if replicated_cloud and cfg.model.cloud is None:
            raise DDNNError("a replicated cloud needs a model with a cloud")
        self.job_maps = JobMaps.of(cfg.model)

    def before_online(self) -> None:
        """Refuse to run beside another aggregator of the deployment: two would each decide
        every sample. Its retained status says whether one is online; one that says so is
        given `rival_wait` seconds to go offline (module constant RIVAL_WAIT)."""
        self.catch_up()
        if self.rival is not None:
            self.log.warning(
                "another aggregator (%s) is online: waiting up to %g s for it to go offline",
                self.rival,
                self.rival_wait,
            )
        deadline = time.monotonic() + self.rival_wait
        while self.rival is not None and (left := deadline - time.monotonic()) > 0:
            if (item := self.client.get(min(left, 0.1))) is not None:
                self.receive(*item)
        if self.rival is not None:
            raise DDNNError(
                f"another aggregator ({self.rival}) is online for deployment "
                f"{self.topics.root}: stop it first (a killed one is offline once the broker "
                "sees its connection drop)"
            )
        for sample in sorted(self.outbox.restarted):  # open when the last process died
            self.counters["undecided_restarted"] += 1
            self._end(sample, Decision(sample=sample, decided=False, reason=RESTARTED))
        self.outbox.pump(time.monotonic())

    def _send_decision(self, payload: bytes) -> Receipt | None:
        self.counters["sent_decision"] += 1
        return self.client.send(self.topics.decisions, payload, qos=1)

    # -- messages ------------------------------------------------------------------------
    @handles(Status)
    def on_status(self, message: Status) -> None:
        role = message.role
        other = message.instance != self.instance
        if role == AGGREGATOR and message.state == "online" and other:
            self.rival = message.instance
            self.log.error("another aggregator of this deployment is online: %s", self.rival)
        elif role == AGGREGATOR and message.instance == self.rival:  # it said goodbye
            self.rival = None
        if role.tier == "device" and role.index is not None and role.index < self.n_devices:
            self.awaited.said(role.index, message.state == "online", time.monotonic())

    @handles(Tick)
    def on_tick(self, message: Tick) -> None:
        if self._open(message.sample, message.t) is None:
            self.counters["late"] += 1  # decided already: a repeat, a replay

    @handles(Features)
    def on_features(self, message: Features) -> None:
        self._gathered(message)

    @handles(Scores)
    def on_scores(self, message: Scores) -> None:
        values = message.values()
        if len(values) != len(self.cfg.model.classes):
            raise Rejected(
                "scores of another number of classes than the model's",
                f"{message.source} sent {len(values)}, the model has {len(self.cfg.model.classes)}",
            )
        self.bounds.check(message.source, values)  # no sender forces an exit
        if message.sample in self.decided:
            self.counters["late"] += 1
            return
        source = message.source
        if source.tier == "device" and source.index is not None:
            self._device_scores(message, source.index, values)
        elif source.tier == "edge" and source.index is not None:
            self._edge_scores(message, source.index, values)
        elif source == CLOUD:
            self._cloud_scores(message, values)
        else:
            raise Rejected("scores from a role that sends none", source)

    def _open(self, sample: int, t0: float, opener: int | None = None) -> Pending | None:
        """The pending sample `sample`, opened now if new: by a tick, or (`--clock wall`)
        by the scores of device `opener`. None when it is decided already."""
        if sample in self.decided:
            return None
        if sample not in self.pending:
            ticked = opener is None
            if not ticked and self.clock == "tick":
                raise Rejected("scores for a sample no tick started", str(sample))
            check_fresh(t0, "a tick" if ticked else "scores")
            if len(self.pending) >= MAX_PENDING:
                raise Rejected("a new sample while too many are pending", str(sample))
            if opener is not None:  # --clock wall: no device may hold more than its share
                if self.opened_by[opener] >= MAX_PENDING // self.n_devices:
                    reason = "a new sample from a device with its share pending"
                    raise Rejected(reason, str(Role.device(opener)))
                self.opened_by[opener] += 1
            p = Pending(sample, t0, Stage.SCORES, 0.0, opener=opener)
            self.pending[sample] = p
            self.outbox.opened(sample)
            self._wait(p, self.deadlines.scores)
        return self.pending[sample]

    def _wait(self, p: Pending, seconds: float) -> None:
        """Give `p` a deadline `seconds` from now (an earlier one of it is void)."""
        p.deadline = time.monotonic() + seconds
        heapq.heappush(self.deadlines_due, (p.deadline, p.sample))

    def _device_scores(self, m: Scores, device: int, values: np.ndarray) -> None:
        if device >= self.n_devices:
            raise Rejected("scores from a device the model does not have", m.source)
        p = self._open(m.sample, m.t0, opener=device)
        if p is None or p.stage is not Stage.SCORES or device in p.scores:
            self.counters["late" if p is None or p.stage is not Stage.SCORES else "duplicate"] += 1
            return
        check_fresh(m.t0, "scores")  # it may become the sample's capture time
        p.scores[device] = values
        now = time.monotonic()
        self.awaited.heard[device] = now  # scores say it is alive as a status does
        p.t0 = min(p.t0, m.t0)
        p.bytes["device_scores"] = p.bytes.get("device_scores", 0) + len(m.scores)
        if self.awaited.devices(self.rates, now) <= set(p.scores):
            self._local_step(p)

    def _edge_scores(self, m: Scores, edge: int, values: np.ndarray) -> None:
        p = self.pending.get(m.sample)
        known = edge < len(self.groups)
        if p is None or p.stage is not Stage.EDGE or not known or edge in p.edge_scores:
            self.counters["late"] += 1
            return
        self._count_received(p, m, {Role.device(d) for d in self.groups[edge]})
        p.edge_scores[edge] = values
        if set(p.edge_scores) >= self._expected_edges(p):
            self._edge_step(p)

    def _cloud_scores(self, m: Scores, values: np.ndarray) -> None:
        p = self.pending.get(m.sample)
        if p is None or p.stage is not Stage.CLOUD:
            self.counters["late"] += 1
            return
        self._count_received(p, m, self.job_maps.inputs)
        self._decide(
            p, "cloud", step(self.points["cloud"], ExitInputs(values[None]), True).probs[0]
        )

    def _gathered(self, m: Features) -> None:
        """A feature map for a replicated cloud's job (aggregator/replicas.py)."""
        self.job_maps.check(m)
        p = self.pending.get(m.sample)
        if p is None or p.stage is not Stage.GATHER or p.gathering is None:
            self.counters["late"] += 1
        elif not p.gathering.add(m):
            self.counters["duplicate"] += 1
        elif p.gathering.complete():
            self._send_job(p, p.gathering)

    def _send_job(self, p: Pending, g: Gathering) -> None:
        """Send the gathered maps as one job, or again the job sent before."""
        if g.job is None:
            if not g.maps:
                self._degraded(p, f"no feature map came within {self.deadlines.gather:g} s")
                return
            g.job, g.maps, p.stage = Job.of(p.sample, p.t0, list(g.maps.values())), {}, Stage.CLOUD
        else:
            self.counters["jobs_resent"] += 1
        self.publish(self.topics.job, g.job)
        self._wait(p, min(self.deadlines.resend, max(0.0, g.until - time.monotonic())))

    @staticmethod
    def _count_received(p: Pending, m: Scores, inputs: set[Role] | set[str]) -> None:
        """Bytes of the feature maps an upper tier received, by the kind of sender; an
        answer that names a sender other than the tier's `inputs` is refused whole."""
        if not set(m.received) <= inputs:
            strange = sorted(set(m.received) - inputs)[:3]
            raise Rejected("scores that name inputs the tier does not have", str(strange))
        for source, n in m.received.items():
            key = "device_features" if source.tier == "device" else "edge_features"
            p.bytes[key] = p.bytes.get(key, 0) + n
            if source.tier == "device" and source.index is not None:
                p.upper_devices.add(source.index)

    # -- the cascade ---------------------------------------------------------------------
    def _exit_step(self, p: Pending, name: str, scores: dict[int, np.ndarray], n: int) -> bool:
        """The cascade at exit `name` for one sample: the scores that arrived, of inputs
        0..n-1 (devices or edges), fused with the presence mask. It decides or abstains
        there (True), or leaves the sample to the tier above (False)."""
        x = np.zeros((1, n, len(self.cfg.model.classes)), dtype=np.float32)
        present = np.zeros((1, n), dtype=bool)
        for i, v in scores.items():
            x[0, i], present[0, i] = v, True
        inputs = ExitInputs(x, present, self.fusions[name])
        result = step(self.points[name], inputs, last=name == self.last_exit)
        p.best = (name, result.probs[0])
        if result.exits[0]:
            self._decide(p, name, result.probs[0])
        elif result.abstains is not None and result.abstains[0]:
            self._abstain(p, name, result.probs[0])
        else:
            return False
        return True

    def _local_step(self, p: Pending) -> None:
        if not p.scores:
            self._undecided(p, f"no device answered within {self.deadlines.scores:g} s")
            return
        p.devices = sorted(p.scores)
        if self._exit_step(p, "local", p.scores, self.n_devices):
            return
        sources = [Role.device(d) for d in p.devices]
        if "edge" in self.fusions:
            p.stage = Stage.EDGE
            self._wait(p, self.deadlines.edge)
            self._offload(p, sources, "edge")
        else:
            self._to_cloud(p, sources)

    def _expected_edges(self, p: Pending) -> set[int]:
        return {e for e, group in enumerate(self.groups) if set(group) & set(p.devices)}

    def _edge_step(self, p: Pending) -> None:
        if not p.edge_scores:
            self._degraded(p, f"no edge answered within {self.deadlines.edge:g} s")
        elif not self._exit_step(p, "edge", p.edge_scores, len(self.groups)):
            self._to_cloud(p, [Role.edge(e) for e in sorted(p.edge_scores)])

    def _to_cloud(self, p: Pending, sources: list[Role]) -> None:
        """Ask `sources` for their feature maps for the cloud, and wait for its answer (or,
        for a replicated cloud, gather the maps here first)."""
        if self.replicated:
            p.stage = Stage.GATHER
            p.gathering = Gathering(set(sources), time.monotonic() + self.deadlines.cloud)
            self._wait(p, min(self.deadlines.gather, self.deadlines.cloud))
        else:
            p.stage = Stage.CLOUD
            self._wait(p, self.deadlines.cloud)
        self._offload(p, sources, "cloud")

    def _offload(self, p: Pending, sources: list[Role], to: Literal["edge", "cloud"]) -> None:
        """Ask `sources` for their feature maps of `p`'s sample, fused by tier `to`."""
        self.publish(self.topics.offload(to), Offload(sample=p.sample, sources=sources, to=to))

    def poll(self, now: float) -> float | None:
        silent = self.awaited.forget_silent(now)
        for device in silent:
            self.counters["devices_silent"] += 1
            self.log.warning(
                "%s silent for %g s: counted offline", Role.device(device), SILENT_AFTER
            )
        if silent or self.awaited.newly_over_rate(self.rates, now):
            # the samples that waited only for those devices are complete now
            awaited = self.awaited.devices(self.rates, now)
            for p in [p for p in self.pending.values() if p.stage is Stage.SCORES and p.scores]:
                if awaited <= set(p.scores):
                    self._local_step(p)
        due = self.deadlines_due
        passed = []  # those set while acting on these wait for the next poll
        while due and due[0][0] <= now:
            passed.append(heapq.heappop(due))
        for deadline, sample in passed:
            p = self.pending.get(sample)
            if p is None or p.deadline != deadline:
                continue  # decided since, or waiting on a later stage's deadline
            with self.guard(sample):
                self._deadline(p, now)
        wake = self.outbox.pump(now)
        return min([t for t in (wake, due[0][0] if due else None) if t is not None], default=None)

    def _deadline(self, p: Pending, now: float) -> None:
        g = p.gathering
        if p.stage is Stage.SCORES:
            self._local_step(p)
        elif p.stage is Stage.EDGE:
            self._edge_step(p)
        elif g is not None and (p.stage is Stage.GATHER or now < g.until):
            self._send_job(p, g)
        else:
            self._degraded(p, f"the cloud did not answer within {self.deadlines.cloud:g} s")

    def close(self) -> None:
        """End every pending sample with an undecided decision, give the broker a moment
        to acknowledge the decisions (those it has not stay journaled for the next start),
        then stop."""
        for p in list(self.pending.values()):
            with self.guard(p.sample):
                self._undecided(p, "the aggregator stopped")
        with self.guard():
            self.outbox.pump(float("inf"))  # durability batch: publish what waits
            if self.outbox.unacknowledged():
                self.client.wait_published(STOP_WAIT)
            self.outbox.pump(float("inf"))
        super().close()
        self.outbox.close()
        if self.state_lock is not None:
            self.state_lock.close()

    # -- endings -------------------------------------------------------------------------
    def _degraded(self, p: Pending, reason: str) -> None:
        assert p.best is not None
        self.counters["degraded"] += 1
        self._decide(p, p.best[0], p.best[1], reason=reason)

    def _undecided(self, p: Pending, reason: str) -> None:
        self.counters["undecided"] += 1
        self._finish(p, decided=False, reason=reason)

    def _abstain(self, p: Pending, exit_name: str, probs: np.ndarray) -> None:
        """The exit-placement paper's drop: the sample is hopeless at `exit_name`; it ends here
        answered "abstain" (no class), and nothing goes up."""
        self.counters["abstained"] += 1
        entropy = float(normalized_entropy(probs[None])[0])
        self._finish(p, decided=True, abstained=True, exit=exit_name, entropy=entropy)

    def _decide(self, p: Pending, exit_name: str, probs: np.ndarray, reason: str | None = None):
        k = int(probs.argmax())
        self.counters[f"exit_{exit_name}"] += 1
        self._finish(
            p,
            decided=True,
            class_index=k,
            class_name=self.cfg.model.classes[k],
            exit=exit_name,
            entropy=float(normalized_entropy(probs[None])[0]),
            degraded=reason is not None,
            reason=reason,
        )

    def _finish(self, p: Pending, **fields: Any) -> None:
        """Decide `p` with `fields` and what `p` gathered. The decision is validated as it
        is made, as every reader validates it: one that fails (absurd values from another
        account that no check foresaw) raises, and `guard` ends the sample undecided."""
        if fields["decided"]:
            fields["devices"] = p.devices
        decision = Decision(
            sample=p.sample,
            bytes=p.bytes,
            upper_devices=sorted(p.upper_devices) if p.stage is not Stage.SCORES else None,
            latency_ms=round(1000.0 * (time.time() - p.t0), 3),
            **fields,
        )
        self._end(p.sample, decision)

    def abandon(self, sample: int) -> None:
        if sample in self.pending:
            self.counters["undecided_failed"] += 1
            self._end(sample, Decision(sample=sample, decided=False, reason=FAILED))

    def _end(self, sample: int, decision: Decision) -> None:
        """The one way a sample ends: out of the pending ones, into the outbox."""
        payload = encode(decision)
        p = self.pending.pop(sample, None)
        if p is not None and p.opener is not None:
            self.opened_by[p.opener] -= 1
        self.outbox.put(sample, payload, time.monotonic())
