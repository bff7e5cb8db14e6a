"""A replicated cloud's jobs: the aggregator gathers the cloud's inputs' feature maps of a
sample, sends them as one `job` that one replica takes through the shared subscription, and
sends it again while the cloud deadline allows, so that a replica that dies holding a job
costs a resend, not the sample (docs/design/aggregator.md, "The cloud's jobs")."""

from __future__ import annotations

from dataclasses import dataclass, field

from ddnn.core.config import ModelConfig
from ddnn.core.roles import CLOUD, tier_input_format, tier_inputs
from ddnn.live.service import Rejected
from ddnn.live.wire import ENCODINGS, MAX_PAYLOAD, Features, Job


@dataclass
class Gathering:
    """One sample's maps asked for, those gathered so far, and the job made of them."""

    asked: set[str]
    until: float  # monotonic: the cloud deadline
    maps: dict[str, Features] = field(default_factory=dict)
    job: Job | None = None

    def add(self, m: Features) -> bool:
        """Gather `m`; False for a duplicate. A map not asked for is refused."""
        if m.source not in self.asked:
            raise Rejected("features not asked for", m.source)
        if m.source in self.maps:
            return False
        self.maps[m.source] = m
        return True

    def complete(self) -> bool:
        return set(self.maps) >= self.asked


@dataclass(frozen=True)
class JobMaps:
    """What a map for a job must be: from an input of the cloud, in the cloud's encoding,
    and small enough that a job of every input's map fits in one message."""

    inputs: frozenset[str]
    encoding: str
    max_bytes: int

    @classmethod
    def of(cls, model: ModelConfig) -> JobMaps:
        inputs = frozenset(tier_inputs(model, CLOUD))
        encoding = ENCODINGS[tier_input_format(model, CLOUD)]
        return cls(inputs, encoding, MAX_PAYLOAD // (len(inputs) + 1))

    def check(self, m: Features) -> None:
        if m.source not in self.inputs:
            raise Rejected("features from a role that is not an input of the cloud", m.source)
        if m.encoding != self.encoding:
            raise Rejected("features in another encoding than the cloud takes", m.encoding)
        if len(m.data) > self.max_bytes:
            raise Rejected("features too big for a job", f"{m.source}: {len(m.data)} bytes")
