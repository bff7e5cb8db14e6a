"""The wire protocol of a live DDNN: topics and validated msgpack messages.

Topics live under `ddnn/<deployment>/<model version>/`, so many deployments and model
versions share one broker without seeing each other's traffic: `status/<role>`, `tick`,
`scores/<role>`, `offload/<tier>`, `features/<role>`, `job`, `decisions` and, where the
deployment captures hard examples, `capture/<role>`. Every payload is a
msgpack map with the schema version `v` and a `kind`, validated by a pydantic model before
use: wrong version, types, shapes, sizes or non-finite numbers raise `WireError` with the
reason, which services count and log and never die of. The sample (frame) id is every
message's correlation id; arrays travel as raw little-endian bytes (`ddnn.core.payloads`).

Design: docs/design/wire.md (what each topic carries).
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ddnn.core.config import FeatureFormat, ModelConfig
from ddnn.core.errors import DDNNError, problems
from ddnn.core.hard import HardRule
from ddnn.core.payloads import pack_features, unpack_bits, unpack_codes
from ddnn.core.roles import Role

SCHEMA = 1
MAX_PAYLOAD = 1 << 20  # no DDNN message comes near 1 MiB: a bigger one is refused unread
MAX_PACKET = MAX_PAYLOAD + 65536  # what a broker is told to take: room for topic and headers
# Class scores are logits: a trained model's are in the tens. Bounding them keeps fusion
# finite (two scores of 3.4e38 averaged overflow to inf, and softmax then gives NaN).
MAX_SCORE = 1e6
SMALL = 64  # score vectors up to this long are checked without NumPy
# Names a peer chooses (counter and refusal names, byte-count keys, reasons) are bounded, so
# that one message cannot hold megabytes of keys that every reader then keeps.
Name = Annotated[str, Field(max_length=128)]
_LITTLE = sys.byteorder == "little"
# A role on the wire is a string in canonical form, read as a Role (ddnn.core.roles).
RoleName = Annotated[str, Field(max_length=16), AfterValidator(Role)]
Sample = Annotated[int, Field(ge=0, lt=2**63)]
Count = Annotated[int, Field(ge=0, lt=2**63)]  # what msgpack packs as an int64, and sums keep
Index = Annotated[int, Field(ge=0, lt=4096)]  # of a device or an edge
# A capture time, Unix seconds: between 1970 and the year 5000, so that any latency derived
# from one stays finite (each service also checks that it is recent: ddnn/live/service.py).
UnixTime = Annotated[float, Field(ge=0.0, le=1e11)]
Shape = Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=1, max_length=4)]
FrameShape = Annotated[
    list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=3, max_length=3)
]
# The bytes of a captured frame, at most: what leaves room in MAX_PAYLOAD for its other fields.
MAX_FRAME = MAX_PAYLOAD - 1024


def shown(value: object, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: what a log line may quote of hostile input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(DDNNError):
    """A message a service does not use. `reason` is one of a fixed set of templates (what
    services count refusals under, so that hostile input cannot grow the counters: the
    variable part, `detail`, is only logged); `str()` gives both."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class WireError(Refused):
    """A payload that is not a valid message of the expected kind, or not on its topic."""


class _Message(BaseModel):
    # no NaN or infinity in any float field: a NaN time passes every comparison as false,
    # and a NaN latency would poison every percentile a reader computes from decisions.
    # Frozen: a message is validated when it is made, and nothing changes it after, so what
    # a service publishes passes the checks its readers make.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
    v: Literal[1] = SCHEMA


class Status(_Message):
    """A service's liveness, with its message counters and rejections by reason (none in
    the last will, which the broker publishes for a process that died). `instance` names
    the process, so that a second one of the same role can tell it is not the first. `t`:
    when the service wrote it, so a last will's is when its process started (a will is
    written at connect), not when the broker published it."""

    kind: Literal["status"] = "status"
    role: RoleName
    state: Literal["online", "offline"]
    t: UnixTime
    instance: str = Field(default="", max_length=128)
    counters: dict[Name, Count] = Field(default={}, max_length=256)
    rejected: dict[Name, Count] = Field(default={}, max_length=256)


class Tick(_Message):
    """Sample `sample` begins: every camera captures its frame (`t`: when, by the wall
    clock), and the aggregator starts waiting for the devices' scores."""

    kind: Literal["tick"] = "tick"
    sample: Sample
    t: UnixTime


class Scores(_Message):
    """Class scores (float32 little-endian) from `source` for `sample`. `t0` is when the
    sample's frame was captured; `received` maps the inputs an upper tier fused to the
    payload bytes it got from each."""

    kind: Literal["scores"] = "scores"
    sample: Sample
    source: RoleName
    scores: bytes = Field(max_length=4 * 4096)
    t0: UnixTime
    # one map per input, each in one message
    received: dict[RoleName, Annotated[int, Field(ge=0, le=MAX_PAYLOAD)]] = Field(
        default={}, max_length=4096
    )

    @field_validator("scores")
    @classmethod
    def _finite(cls, v: bytes) -> bytes:
        if len(v) % 4:
            raise ValueError(f"scores hold {len(v)} bytes, not a whole number of float32")
        if len(v) <= 4 * SMALL:  # a few classes: plain Python beats NumPy's per-call cost
            values = memoryview(v).cast("B").cast("f") if _LITTLE else np.frombuffer(v, "<f4")
            if not all(abs(x) <= MAX_SCORE for x in values):  # NaN compares False
                if not all(map(math.isfinite, values)):
                    raise ValueError("scores hold a NaN or infinite value")
                raise ValueError(f"scores beyond +-{MAX_SCORE:g}")
            return v
        values = np.frombuffer(v, dtype="<f4")
        if not np.isfinite(values).all():
            raise ValueError("scores hold a NaN or infinite value")
        if values.size and np.abs(values).max() > MAX_SCORE:
            raise ValueError(f"scores beyond +-{MAX_SCORE:g}")
        return v

    def values(self) -> np.ndarray:
        return np.frombuffer(self.scores, dtype="<f4").copy()


class Offload(_Message):
    """The aggregator escalates `sample`: the `sources` (devices, or edges) send their
    feature maps of it to the tier `to`, which fuses what arrives and answers."""

    kind: Literal["offload"] = "offload"
    sample: Sample
    sources: list[RoleName] = Field(max_length=4096)
    to: Literal["edge", "cloud"]


ENCODINGS = {"binary": "bits", "2bit": "c2", "4bit": "c4", "pixels": "u8", "float": "f32"}
Encoding = Literal["bits", "c2", "c4", "u8", "f32"]
CODES = {"c2": 2, "c4": 4}  # k-bit codes, k bits per value (ddnn/core/payloads.py)


class Features(_Message):
    """A feature map: `encoding` bits (1 per +-1 activation), c2 or c4 (2- or 4-bit codes of
    a k-bit tier), u8 (raw pixels) or f32."""

    kind: Literal["features"] = "features"
    sample: Sample
    source: RoleName
    encoding: Encoding
    shape: Shape
    data: bytes

    @classmethod
    def of(cls, sample: int, source: str, features: np.ndarray, fmt: FeatureFormat) -> Features:
        """The message for a feature map in format `fmt` (binary, 2bit, 4bit, pixels or
        float)."""
        return cls(
            sample=sample,
            source=source,
            encoding=ENCODINGS[fmt],
            shape=list(features.shape),
            data=pack_features(features, fmt),
        )

    def array(self, expected_shape: tuple[int, ...]) -> np.ndarray:
        """The map as float32 of `expected_shape`; raises WireError on any mismatch."""
        if tuple(self.shape) != tuple(expected_shape):
            raise WireError(
                "features of another shape than the tier takes",
                f"{self.source} sent {self.shape}, expected {list(expected_shape)}",
            )
        n = math.prod(expected_shape)
        if self.encoding == "bits":
            try:
                return unpack_bits(self.data, expected_shape)
            except ValueError as e:
                raise WireError("features whose bits do not fill the shape", str(e)) from None
        if self.encoding in CODES:
            try:
                return unpack_codes(self.data, expected_shape, CODES[self.encoding])
            except ValueError as e:
                raise WireError("features whose codes do not fill the shape", str(e)) from None
        dtype = np.uint8 if self.encoding == "u8" else np.dtype("<f4")
        if len(self.data) != n * np.dtype(dtype).itemsize:
            raise WireError(
                "features whose bytes do not fill the shape",
                f"{self.source} sent {len(self.data)}, expected {n * np.dtype(dtype).itemsize}",
            )
        out = np.frombuffer(self.data, dtype=dtype).astype(np.float32).reshape(expected_shape)
        if not np.isfinite(out).all():
            raise WireError("features holding a NaN or infinite value", self.source)
        return out


class Job(_Message):
    """One sample's work for a replicated cloud, whole: the feature maps of its inputs that
    reached the aggregator (`maps` and `shapes` by source, all in `encoding`). A replica needs
    nothing else, so a shared subscription may hand each job to any member, and a job lost
    with a killed member can be sent again to another (aggregator/service.py)."""

    kind: Literal["job"] = "job"
    sample: Sample
    t0: UnixTime
    encoding: Encoding
    maps: dict[RoleName, bytes] = Field(max_length=4096)
    shapes: dict[RoleName, Shape] = Field(max_length=4096)

    @field_validator("shapes")
    @classmethod
    def _one_shape_per_map(cls, v: dict[str, list[int]], info: ValidationInfo) -> dict:
        if set(v) != set(info.data.get("maps", {})):
            raise ValueError("shapes name other sources than maps")
        return v

    @classmethod
    def of(cls, sample: int, t0: float, maps: list[Features]) -> Job:
        """The job of `maps` (all in one encoding, which the aggregator checked)."""
        return cls(
            sample=sample,
            t0=t0,
            encoding=maps[0].encoding if maps else "bits",
            maps={m.source: m.data for m in maps},
            shapes={m.source: m.shape for m in maps},
        )

    def features(self) -> list[Features]:
        """The maps as the messages they came in (each still to be checked by `array`)."""
        return [
            Features(
                sample=self.sample,
                source=source,
                encoding=self.encoding,
                shape=self.shapes[source],
                data=data,
            )
            for source, data in self.maps.items()
        ]


class Decision(_Message):
    """The one message that ends a sample. `decided` is False (with `reason`) when no tier
    could classify it; `degraded` is True when an upper tier failed to answer in time and
    a lower tier's answer stands; `abstained` is True (with no class) when the sample was
    beyond the drop threshold of its `exit` (the exit-placement paper) and was not sent further."""

    kind: Literal["decision"] = "decision"
    sample: Sample
    decided: bool
    class_index: int | None = Field(default=None, ge=0)
    class_name: Name | None = None
    exit: Literal["local", "edge", "cloud"] | None = None
    entropy: float | None = Field(default=None, ge=0, le=1)  # normalized: 0 sure, 1 uniform
    devices: list[Index] = Field(default=[], max_length=4096)
    bytes: dict[Name, Count] = Field(default={}, max_length=16)
    # from the capture (a device's clock) to the decision (the aggregator's): below 0 when
    # their clocks disagree by more than the latency, which is worth seeing, not refusing
    latency_ms: float | None = Field(default=None, ge=-1e9, le=1e9)
    degraded: bool = False
    abstained: bool = False
    reason: str | None = Field(default=None, max_length=512)
    # devices whose feature maps reached edge/cloud
    upper_devices: list[Index] | None = Field(default=None, max_length=4096)

    def is_hard(self, rule: HardRule, model: ModelConfig) -> bool:
        """Whether `rule` calls this sample of a deployment of `model` a hard example."""
        return rule.decision(
            model,
            exit=self.exit,
            entropy=self.entropy,
            degraded=self.degraded,
            abstained=self.abstained,
            devices=len(set(self.devices)),
        )


class Capture(_Message):
    """The camera frame of a hard sample: device `source` sends it once the decision of
    `sample` met the hard-example rule (ddnn/core/hard.py), and only where the deployment
    captures (opt-in: the frames leave the cameras). `data` is the frame as the model took
    it, uint8 (C, H, W) row-major: exactly prod(`shape`) bytes."""

    kind: Literal["capture"] = "capture"
    sample: Sample
    source: RoleName
    shape: FrameShape
    data: bytes = Field(max_length=MAX_FRAME)

    @field_validator("data")
    @classmethod
    def _fills_shape(cls, v: bytes, info: ValidationInfo) -> bytes:
        shape = info.data.get("shape")
        if shape is not None and len(v) != math.prod(shape):
            raise ValueError(f"{len(v)} bytes, not the {math.prod(shape)} of shape {shape}")
        return v

    @classmethod
    def of(cls, sample: int, source: str, frame: np.ndarray) -> Capture:
        """The message of a uint8 (C, H, W) `frame`."""
        return cls(
            sample=sample,
            source=source,
            shape=list(frame.shape),
            data=np.ascontiguousarray(frame, dtype=np.uint8).tobytes(),
        )

    def frame(self) -> np.ndarray:
        """The frame as uint8 (C, H, W)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(self.shape)


Message = Status | Tick | Scores | Offload | Features | Job | Decision | Capture
# The one table of the wire's message kinds: the first topic level under a deployment's root
# (its channel) -> the message that travels there, and only there.
CHANNELS: dict[str, type[_Message]] = {
    "status": Status,
    "tick": Tick,
    "scores": Scores,
    "offload": Offload,
    "features": Features,
    "job": Job,
    "decisions": Decision,
    "capture": Capture,
}
KINDS: dict[str, type[_Message]] = {m.model_fields["kind"].default: m for m in CHANNELS.values()}


def encode(message: _Message) -> bytes:
    """The payload of `message`: its fields as a msgpack map. The fields are plain values
    (no nested models), so they are packed as they are, without `model_dump`'s copy."""
    return msgpack.packb(message.__dict__, use_bin_type=True)


def decode(payload: bytes) -> Message:
    """Parse and validate one payload."""
    if len(payload) > MAX_PAYLOAD:
        raise WireError("payload over the size limit", f"{len(payload)} > {MAX_PAYLOAD} bytes")
    try:
        raw: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise WireError("not msgpack", type(e).__name__) from None
    if not isinstance(raw, dict):
        raise WireError("not a msgpack map", type(raw).__name__)
    # The envelope's types are checked before use: an unhashable `kind` or a `v` of True
    # must be refused like any other bad value, not raise in a lookup.
    version, kind = raw.get("v"), raw.get("kind")
    if type(version) is not int or version != SCHEMA:
        raise WireError("unsupported schema version", f"{shown(version)}, not {SCHEMA}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireError("unknown message kind", shown(kind))
    try:
        return KINDS[kind].model_validate(raw)  # type: ignore[return-value]
    except ValidationError as e:
        raise WireError(f"bad {kind} message", problems(e, 1)[:200]) from None


class Topics:
    """Topic names of one deployment and model version."""

    def __init__(self, deployment: str, model_version: str) -> None:
        for name, value in (("deployment", deployment), ("model version", model_version)):
            if not value or any(c in value for c in "/+#") or not value.isprintable():
                raise DDNNError(f"{name} {value!r} cannot be part of an MQTT topic")
        self.root = f"ddnn/{deployment}/{model_version}"
        self.tick = f"{self.root}/tick"
        self.job = f"{self.root}/job"
        self.decisions = f"{self.root}/decisions"
        self.hello = f"{self.root}/hello"  # + /<role>/<instance>: a service's own probe
        self.all_scores = f"{self.root}/scores/+"
        self.all_status = f"{self.root}/status/+"

    def check(self, topic: str, message: Message) -> None:
        """Refuse a valid message on a topic where it does not belong (a tick on a scores
        topic, scores whose source is not the topic's sender), so that no publisher can
        pass one kind of message off as another."""
        level, _, role = topic.removeprefix(self.root + "/").partition("/")
        expected = CHANNELS.get(level)
        if expected is None or not isinstance(message, expected):
            detail = f"{message.kind}: {topic}"
            raise WireError("a message of another kind than its topic's", detail)
        # (no getattr: a pydantic model answers a missing attribute slowly, by raising)
        if isinstance(message, Status):
            sender: str | None = message.role
        elif isinstance(message, (Scores, Features, Capture)):
            sender = message.source
        elif isinstance(message, Offload):
            sender = message.to  # (not a sender: the tier it goes to, as its topic says)
        else:
            sender = None
        if role and sender != role:
            raise WireError("a sender other than its topic's role", f"{sender} on {topic}")

    def channel(self, name: str, role: str | None = None) -> str:
        """The topic of channel `name` (a key of CHANNELS), under `role` where the channel
        has one topic per role (`+`: a filter for every role's)."""
        return f"{self.root}/{name}" if role is None else f"{self.root}/{name}/{role}"

    def status(self, role: Role) -> str:
        return self.channel("status", role)

    def offload(self, tier: str) -> str:
        """Where the aggregator asks tier `tier` ("edge" or "cloud") to fuse a sample, and
        that tier's inputs to send it their maps."""
        return self.channel("offload", tier)

    def shared_jobs(self, group: str) -> str:
        """The filter by which replicas share the jobs: MQTT 5's `$share/<group>/<filter>`
        hands each job to one member of `group`."""
        if not group or any(c in group for c in "/+#") or not group.isprintable():
            raise DDNNError(f"group {group!r} cannot name an MQTT shared subscription")
        return f"$share/{group}/{self.job}"

    def scores(self, role: Role) -> str:
        return self.channel("scores", role)

    def features(self, role: Role) -> str:
        return self.channel("features", role)

    def capture(self, role: Role) -> str:
        return self.channel("capture", role)
