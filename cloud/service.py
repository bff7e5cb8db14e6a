"""An upper tier as a live service: the machinery an edge and the cloud share.

When the aggregator asks a set of sources to send their feature maps to this tier, the tier
collects the maps of its inputs until all arrived or its deadline passed, fuses what arrived
(missing inputs as in training), runs its layers (its runtime, cloud/runtime.py) and
publishes its class scores; an edge also sends its own feature map to the cloud when asked.
What a tier holds is bounded (`KEEP_MAX`, `UNASKED_PER_SOURCE`), and maps nobody asked for by
their deadline are dropped unrun, so a flooding source cannot push out the real ones.
Replicated (`group`): the cloud as one of several replicas behind an MQTT 5 shared
subscription, answering each `job` the aggregator gathered, holding nothing between them.

Design: docs/design/cloud.md (bounds, unasked maps, encodings, replicas).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from cloud.runtime import TierRuntime
from ddnn.core.config import FeatureFormat
from ddnn.core.errors import DDNNError
from ddnn.core.payloads import pack_scores
from ddnn.core.roles import Role, tier_input_format
from ddnn.live.service import Broker, KeptMaps, Recent, Rejected, Service, handles
from ddnn.live.wire import ENCODINGS, Features, Job, Offload, Refused, Scores

KEEP_MAX = 1024  # samples remembered at most: collecting, run, and kept for the cloud
UNASKED_PER_SOURCE = 64  # maps of one input collecting before their offload request came


@dataclass
class Collecting:
    expected: set[str] | None  # None until the offload request names the inputs
    deadline: float  # monotonic
    t0: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)


class TierService(Service):
    """`runtime`: the tier's layers (cloud/runtime.py: packed, or PyTorch); `inputs`: the
    roles feeding this tier, in the order of its input slots; `group`: the shared
    subscription group of a replicated cloud (module doc)."""

    def __init__(
        self,
        role: Role,
        runtime: TierRuntime,
        inputs: list[Role],
        broker: Broker,
        deployment: str,
        *,
        output_format: FeatureFormat = "binary",
        deadline: float = 1.0,
        keep_seconds: float = 10.0,
        group: str | None = None,
    ) -> None:
        self.role = role
        self.group = group
        self.replicated = group is not None
        if group is not None and role.tier != "cloud":
            raise DDNNError("only the cloud runs replicated (its answer needs no kept map)")
        manifest = runtime.manifest
        if manifest is None:
            raise DDNNError("a tier's runtime must come from an export (it names the model)")
        super().__init__(manifest, broker, deployment, keep_session=group is None)
        self.runtime = runtime
        self.inputs = inputs
        self.slot = {r: i for i, r in enumerate(inputs)}
        self.input_shape = runtime.in_shape
        self.tier = role.tier  # "edge" or "cloud"
        self.deadline = deadline
        self.output_format = output_format
        self.input_encoding = ENCODINGS[tier_input_format(self.model, role)]
        self.collecting: OrderedDict[int, Collecting] = OrderedDict()
        # samples already run: their late feature maps are dropped
        self.done: Recent[None] = Recent(KEEP_MAX)
        self.kept = KeptMaps(keep_seconds, KEEP_MAX)

    @handles(Offload)
    def on_offload(self, message: Offload) -> None:
        if message.to == self.tier and message.sample not in self.done:
            mine = {s for s in message.sources if s in self.slot}
            if mine:
                self._collecting(message.sample).expected = mine
                self._maybe_run(message.sample)
        if self.tier == "edge" and self.role in message.sources:
            self.send_kept(self.kept, message.sample, self.output_format)

    @handles(Features)
    def on_features(self, message: Features) -> None:
        self._check(message)
        array = message.array(self.input_shape)  # a malformed map is refused, late or not
        if message.sample in self.done:
            self.counters["late"] += 1
            return
        new = message.sample not in self.collecting
        if new and self._unasked(message.source) >= UNASKED_PER_SOURCE:
            raise Rejected("features not asked for, over the per-source limit", message.source)
        c = self._collecting(message.sample)
        c.maps[message.source] = array
        c.received[message.source] = len(message.data)
        self._maybe_run(message.sample)

    @handles(Job)
    def on_job(self, job: Job) -> None:
        """Answer a job with its maps that check out; each one that does not is refused
        (counted under its reason) as the same map sent on its own would be."""
        c = Collecting(None, 0.0, job.t0)
        for m in job.features():
            try:
                self._check(m)
                c.maps[m.source] = m.array(self.input_shape)
            except Refused as e:
                self.reject(e.reason, e.detail)
                continue
            c.received[m.source] = len(m.data)
        self._answer(job.sample, c)

    def _check(self, message: Features) -> None:
        """Refuse a map that is not from an input of this tier, or not in its encoding."""
        if message.source not in self.slot:
            reason = "features from a role that is not an input of this tier"
            raise Rejected(reason, message.source)
        if message.encoding != self.input_encoding:
            raise Rejected("features in another encoding than the tier takes", message.encoding)

    def _collecting(self, sample: int) -> Collecting:
        if sample not in self.collecting:
            now = time.monotonic()
            self.collecting[sample] = Collecting(None, now + self.deadline, time.time())
            while len(self.collecting) > KEEP_MAX:
                self.collecting.popitem(last=False)
                self.counters["dropped"] += 1
        return self.collecting[sample]

    def _unasked(self, source: str) -> int:
        """Samples collecting a map of `source` whose offload request has not come."""
        return sum(c.expected is None and source in c.maps for c in self.collecting.values())

    def _maybe_run(self, sample: int) -> None:
        c = self.collecting[sample]
        if c.expected is not None and c.expected <= set(c.maps):
            self._run(sample)

    def _run(self, sample: int) -> None:
        self.done.add(sample)
        self._answer(sample, self.collecting.pop(sample))

    def _answer(self, sample: int, c: Collecting) -> None:
        """Fuse the maps of `c`, run the tier's layers, publish its scores."""
        if not c.maps:
            self.counters["nothing_arrived"] += 1
            return
        x = np.zeros((len(self.inputs), *self.input_shape), dtype=np.float32)
        present = np.zeros(len(self.inputs), dtype=bool)
        for source, fmap in c.maps.items():
            x[self.slot[source]], present[self.slot[source]] = fmap, True
        scores, own = self.runtime(x, present)
        if self.tier == "edge":
            self.counters["features_dropped"] += self.kept.put(sample, own)
        message = Scores(
            sample=sample,
            source=self.role,
            scores=pack_scores(scores),
            t0=c.t0,
            received=c.received,
        )
        self.publish(self.topics.scores(self.role), message)
        self.counters["samples"] += 1

    def poll(self, now: float) -> float | None:
        """Run each sample whose deadline passed on the maps it has; drop, unrun, those whose
        offload request never came (module doc: the real request for that id may still come,
        so the id is not marked done)."""
        for sample in [s for s, c in self.collecting.items() if c.deadline <= now]:
            if self.collecting[sample].expected is None:
                del self.collecting[sample]
                self.counters["unasked_dropped"] += 1
                continue
            with self.guard(sample):  # one sample's failure holds up none of the others
                self._run(sample)
        self.counters["features_dropped"] += self.kept.expire(now)
        return min((c.deadline for c in self.collecting.values()), default=None)
