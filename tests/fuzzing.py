"""The strategies of the valid-message fuzz (tests/test_fuzz.py): values drawn from the
pydantic models of ddnn/live/wire.py (their `Field` bounds) at their limits, and `Fuzz`, one
deployment under fuzz, whose strategies draw whole messages from its roles, shapes and grants.
"""

from __future__ import annotations

import math
import time
import types
import typing
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_origin

import numpy as np
from hypothesis import strategies as st
from pydantic import AfterValidator, ValidationError
from pydantic.fields import FieldInfo

from aggregator.service import AggregatorService
from cloud.service import TierService
from ddnn.core.payloads import VALUE_BITS
from ddnn.core.roles import MAX_INDEX, Role
from ddnn.core.roles import PATTERN as ROLE_PATTERN
from ddnn.live.bounds import ScoreBounds
from ddnn.live.service import WALL_SKEW, Service
from ddnn.live.wire import (
    ENCODINGS,
    KINDS,
    MAX_FRAME,
    MAX_PAYLOAD,
    MAX_SCORE,
    SMALL,
    Capture,
    Features,
    Job,
    Message,
    Offload,
    Scores,
    Tick,
    UnixTime,
    encode,
)
from devices.service import DeviceService
from tests.inprocess import Rig

REAL_BASE = 2**40  # the real samples' ids: apart from the fuzz's, which may still hit them
MSGPACK_INT = 2**64 - 1  # the largest int msgpack packs: an int without an upper bound
ROOM = 512  # bytes of a message besides its one big field, so that it fits MAX_PAYLOAD
BITS = {ENCODINGS[fmt]: bits for fmt, bits in VALUE_BITS.items()}  # per value, by encoding
F32 = np.float32
ONE_IN_8 = st.sampled_from([False] * 7 + [True])  # (hypothesis favours the first)


# -- strategies from the schema --------------------------------------------------------------
def unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """A type and its constraints: pydantic keeps them in `Annotated` metadata, as
    annotated_types objects inside a `FieldInfo`, or bare (validators)."""
    meta: list[Any] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        for m in extra:
            meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return tp, meta


def limits(meta: list[Any]) -> dict[str, Any]:
    """The numeric and length bounds among `meta` (ge, gt, le, lt, min_length, max_length)."""
    names = ("ge", "gt", "le", "lt", "min_length", "max_length")
    return {n: getattr(m, n) for m in meta for n in names if getattr(m, n, None) is not None}


def is_role(meta: list[Any]) -> bool:
    """Whether `meta` makes a str a `RoleName`: roles are drawn from the deployment's."""
    return any(isinstance(m, AfterValidator) and m.func is Role for m in meta)


UNIX_LIMITS = limits(unwrap(UnixTime)[1])


def int_range(lim: dict[str, Any]) -> tuple[int, int]:
    """The closed range of an int field; without an upper bound, what msgpack can pack."""
    lo = lim["ge"] if "ge" in lim else lim["gt"] + 1 if "gt" in lim else -(2**63)
    hi = lim["le"] if "le" in lim else lim["lt"] - 1 if "lt" in lim else MSGPACK_INT
    return lo, hi


def ints_at_limits(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Any int of [lo, hi], half of them at its edges and at the widths machines care for."""
    edges = [lo, lo + 1, lo + 2, hi, hi - 1, hi - 2, 0, 1, 4095, 4096, 65535, 65536]
    edges += [2**31 - 1, 2**31, 2**32, 2**53, 2**53 + 1, 2**62, 2**63 - 2, 2**63 - 1, 2**63]
    return st.one_of(st.sampled_from([v for v in edges if lo <= v <= hi]), st.integers(lo, hi))


def float_range(lim: dict[str, Any]) -> tuple[float, float]:
    """The closed range of a float field (every float field of the wire is bounded)."""
    lo = lim.get("ge", math.nextafter(lim["gt"], math.inf) if "gt" in lim else -1e308)
    hi = lim.get("le", math.nextafter(lim["lt"], -math.inf) if "lt" in lim else 1e308)
    return float(lo), float(hi)


def floats_at_limits(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Any finite float of [lo, hi], half of them at its bounds, a step inside them, signed
    zeros and denormals."""
    edges = [lo, hi, math.nextafter(lo, math.inf), math.nextafter(hi, -math.inf), (lo + hi) / 2]
    edges += [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 0.5, 1.0, -1.0]
    inside = [v for v in edges if lo <= v <= hi]
    return st.one_of(st.sampled_from(inside), st.floats(lo, hi, allow_nan=False))


def times(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Capture times: the bounds of `UnixTime`, and (twice as often) times about now, on
    either side of the skew a service takes (ddnn/live/service.py `check_fresh`)."""
    near = [0.0, -1e-6, 1e-6, WALL_SKEW - 0.01, WALL_SKEW + 0.01, 3600.0, 1e6]
    offsets = st.sampled_from(near + [-x for x in near]) | st.floats(-2 * WALL_SKEW, WALL_SKEW)
    about_now = offsets.map(lambda d: min(max(time.time() + d, lo), hi))
    return st.one_of(st.just(0.0).map(lambda _: time.time()), about_now, floats_at_limits(lo, hi))


def rarely(full: st.SearchStrategy[Any], usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`full` (a container at its limit) one time in eight, else `usual`: a full one costs
    every reader thousands of validated items, and the limit needs no more to be tried."""
    return ONE_IN_8.flatmap(lambda big: full if big else usual)


def texts(most: int) -> st.SearchStrategy[str]:
    """Short strings, and strings of exactly `most` characters (one repeated: cheap)."""
    full = st.characters(codec="utf-8").map(lambda c: c * most)
    return st.one_of(st.text(max_size=min(most, 8)), full, st.just(""))


def binaries(most: int) -> st.SearchStrategy[bytes]:
    """Short byte strings, and `most` bytes (one repeated: cheap)."""
    full = st.integers(0, 255).map(lambda b: bytes([b]) * most)
    return st.one_of(st.binary(max_size=min(most, 16)), full)


def distinct(key: Any, n: int) -> list[Any]:
    """`n` distinct valid keys of type `key`: the map that fills a dict to its limit."""
    _, meta = unwrap(key)
    if is_role(meta):
        return [Role.device(i) for i in range(min(n, MAX_INDEX + 1))]
    width = limits(meta).get("max_length", 16)
    return [f"{i:0{width}d}" for i in range(n)]  # names at their longest, too


@dataclass(repr=False)  # (hypothesis shows strategies, and through them this, by repr)
class Fuzz:
    """One deployment under fuzz: its rig and services, who may write where, what its tiers
    take, and what was sent and decided."""

    name: str
    rig: Rig
    aggregator: AggregatorService
    devices: list[DeviceService]
    tiers: list[TierService]
    roles: list[Role]  # the deployment's, and roles it does not have
    # kind -> (account, topic, its sender's role, or the tier an offload asks)
    routes: dict[str, list[tuple[str, str, str | None]]]
    anywhere: list[tuple[str, str]]  # every (account, topic) an account may write
    shapes: dict[str, tuple[int, ...]]  # role -> the shape of the maps its tier above takes
    encodings: dict[str, str]  # role -> the encoding its tier above takes
    cloud_encoding: str
    classes: int
    bounds: ScoreBounds
    real: list[int] = field(default_factory=list)  # the real samples ticked, in order
    counts: Counter[str] = field(default_factory=Counter)  # kind -> messages sent
    stray: Counter[str] = field(default_factory=Counter)  # ... of them, on another's topic
    decided: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    invalid: int = 0  # drawn field values that did not make a valid message
    _cache: dict[tuple[str, str], st.SearchStrategy[Message]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Fuzz({self.name!r})"

    @property
    def services(self) -> list[Service]:
        return self.rig.services

    def recent_real(self, k: int) -> int:
        """The id of the real sample ticked `k` before the last: the fuzz aims at them too."""
        return REAL_BASE + max(len(self.real) - 1 - k, 0)

    # -- strategies ----------------------------------------------------------------------
    def schema(self, tp: Any, meta: list[Any]) -> st.SearchStrategy[Any]:
        """Valid values of type `tp` under constraints `meta`, at their limits."""
        tp, more = unwrap(tp)
        meta = [*meta, *more]
        origin, lim = get_origin(tp), limits(meta)
        if origin is Literal:
            return st.sampled_from(get_args(tp))
        if origin in (typing.Union, types.UnionType):
            return st.one_of(*(self.schema(a, meta) for a in get_args(tp)))
        if tp is type(None):
            return st.none()
        if tp is bool:
            return st.booleans()
        if tp is int:
            return ints_at_limits(*int_range(lim))
        if tp is float:
            return (
                times(*float_range(lim))
                if lim == UNIX_LIMITS
                else floats_at_limits(*float_range(lim))
            )
        if tp is str:
            if is_role(meta):
                return self.any_role()
            return texts(lim.get("max_length", 64))
        if tp is bytes:
            return binaries(lim.get("max_length", 64))
        if origin is list:
            (item,) = get_args(tp)
            items = self.schema(item, [])
            least, most = lim.get("min_length", 0), lim.get("max_length", 16)
            full = items.map(lambda v: [v] * most)
            return rarely(full, st.lists(items, min_size=least, max_size=min(most, 4)))
        if origin is dict:
            key, value = get_args(tp)
            keys, values = self.schema(key, []), self.schema(value, [])
            most = lim.get("max_length", 16)
            many = distinct(key, most)
            full = values.map(lambda v: dict.fromkeys(many, v))
            return rarely(full, st.dictionaries(keys, values, max_size=min(most, 3)))
        raise TypeError(f"the fuzz has no strategy for {tp!r}: teach it this field's type")

    def any_role(self) -> st.SearchStrategy[Role]:
        """A role of the deployment or not; every spelling the schema takes is possible."""
        pattern = st.from_regex(ROLE_PATTERN, fullmatch=True)
        return st.one_of(
            st.sampled_from(self.roles), st.sampled_from(self.roles), pattern.map(Role)
        )

    def samples(self) -> st.SearchStrategy[int]:
        lo, hi = int_range(limits(Tick.model_fields["sample"].metadata))
        return st.one_of(ints_at_limits(lo, hi), st.integers(0, 3).map(self.recent_real))

    def score_values(self, source: Role) -> list[float]:
        """Scores at the bounds that matter for `source`: the wire's, its own, the other
        roles' (as float32, and one float32 step either side where still on the wire)."""
        bounds = {MAX_SCORE, self.bounds.bound(source), *self.bounds.bounds.values()}
        out = [0.0, -0.0, 1.0, 12.0, 1.4e-45, 1.1754942e-38]
        for b in map(F32, bounds):
            for v in (b, np.nextafter(b, F32(0)), np.nextafter(b, F32(np.inf))):
                if abs(float(v)) <= MAX_SCORE:
                    out.append(float(v))
        return out + [-v for v in out]

    def score_vectors(self, source: Role) -> st.SearchStrategy[bytes]:
        most = limits(Scores.model_fields["scores"].metadata)["max_length"] // 4
        n = self.classes
        sizes = st.one_of(
            st.just(n),
            st.just(n),
            st.sampled_from([0, 1, n - 1, n + 1, SMALL, SMALL + 1, most]),
            st.integers(0, most),
        )
        value = st.one_of(
            st.sampled_from(self.score_values(source)),
            st.floats(-MAX_SCORE, MAX_SCORE, width=32),
        )
        values = st.lists(value, min_size=1, max_size=8)
        return st.tuples(sizes, values).map(
            lambda t: np.resize(np.asarray(t[1], F32), t[0]).tobytes()
        )

    def shape_strategy(self) -> st.SearchStrategy[list[int]]:
        """Any `Shape` of the schema, most of which no tier takes."""
        return self.schema(
            Features.model_fields["shape"].annotation, Features.model_fields["shape"].metadata
        )

    def payload(self, shape: list[int], encoding: str, cap: int) -> st.SearchStrategy[bytes]:
        """The bytes of a map: exactly what `shape` takes in `encoding` (random values, or for
        f32 values at the limits), a byte short or over, none, or as many as fit."""
        need = -(-math.prod(shape) * BITS[encoding] // 8)
        lengths = [0, cap] + [n for n in (need, need, need, need - 1, need + 1) if 0 <= n <= cap]
        f32 = [0.0, -0.0, 1.0, -1.0, 1e-45, 3.4e38, -3.4e38, math.nan, math.inf]

        def make(length: int, seed: int, value: float) -> bytes:
            if length == cap:
                return bytes([seed % 256]) * length
            if encoding == "f32" and length == need:
                rng = np.random.default_rng(seed)
                out = rng.standard_normal(length // 4).astype("<f4")
                out[:: max(1, seed % 7 + 1)] = value
                return out.tobytes()
            return np.random.default_rng(seed).bytes(length)

        return st.builds(
            make, st.sampled_from(lengths), st.integers(0, 2**32 - 1), st.sampled_from(f32)
        )

    def feature_maps(self, source: Role) -> st.SearchStrategy[dict[str, Any]]:
        """shape, encoding and data of a map from `source`: half of them what its tier above
        takes (in its encoding, or another), half anything of the schema."""
        fits = self.shapes.get(source)
        shapes = st.just(list(fits)) if fits else self.shape_strategy()
        own = st.just(self.encodings.get(source, "bits"))
        fitting = st.tuples(shapes, own | st.sampled_from(sorted(BITS)))
        anything = st.tuples(self.shape_strategy(), st.sampled_from(sorted(BITS)))
        return st.one_of(fitting, anything).flatmap(
            lambda se: self.payload(se[0], se[1], MAX_PAYLOAD - ROOM).map(
                lambda data: {"shape": se[0], "encoding": se[1], "data": data}
            )
        )

    def frames(self) -> st.SearchStrategy[dict[str, Any]]:
        """shape and data of a captured frame: half of them of the model's input shape, half
        of any shape of the schema that fits a message; the data exactly its bytes."""
        fits = list(self.rig.manifest.ddnn_config().model.input_shape)
        spec = Capture.model_fields["shape"]
        shapes = self.schema(spec.annotation, spec.metadata).filter(
            lambda shape: math.prod(shape) <= MAX_FRAME
        )
        return st.tuples(st.just(fits) | shapes, st.integers(0, 2**32 - 1)).map(
            lambda t: {"shape": t[0], "data": np.random.default_rng(t[1]).bytes(math.prod(t[0]))}
        )

    def job_maps(self) -> st.SearchStrategy[dict[str, Any]]:
        """encoding, maps and shapes of a job: the cloud's inputs (mostly in its encoding,
        fitting), any roles, or the most maps a job holds (empty ones: cheap)."""
        most = limits(Job.model_fields["maps"].metadata)["max_length"]
        encodings = st.just(self.cloud_encoding) | st.sampled_from(sorted(BITS))
        inputs = sorted(self.shapes, key=str)
        sources = st.one_of(
            st.lists(st.sampled_from(inputs), unique=True, max_size=len(inputs)),
            st.lists(self.any_role(), unique=True, max_size=6),
        )

        @st.composite
        def job(draw: st.DrawFn) -> dict[str, Any]:
            encoding = draw(encodings)
            if draw(ONE_IN_8) and draw(ONE_IN_8):
                full = distinct(get_args(Job.model_fields["maps"].annotation)[0], most)
                return {
                    "encoding": encoding,
                    "maps": dict.fromkeys(full, b""),
                    "shapes": {r: [1] for r in full},
                }
            chosen = draw(sources)
            cap = (MAX_PAYLOAD - ROOM * (len(chosen) + 1)) // max(1, len(chosen))
            maps, shapes = {}, {}
            for r in chosen:
                fits = self.shapes.get(r)
                shape = list(fits) if fits and draw(st.booleans()) else draw(self.shape_strategy())
                shapes[r] = shape
                maps[r] = draw(self.payload(shape, encoding, cap))
            return {"encoding": encoding, "maps": maps, "shapes": shapes}

        return job()

    def message(self, kind: str, sender: str) -> st.SearchStrategy[Message]:
        """Valid messages of `kind` whose sender (where the kind names one) is `sender` (an
        offload's: the tier it asks, where `sender` is one): every field from the schema,
        except those whose values must agree with each other or with the deployment to reach
        past the first check."""
        key = (kind, str(sender))
        if key in self._cache:
            return self._cache[key]
        model = KINDS[kind]
        made: dict[str, st.SearchStrategy[Any]] = {"sample": self.samples()}
        made |= {"role": st.just(sender), "source": st.just(sender)}
        joint: st.SearchStrategy[dict[str, Any]] = st.just({})
        if model is Offload and sender in ("edge", "cloud"):
            made["to"] = st.just(sender)  # the tier its topic names
        if model is Scores:
            made["scores"] = self.score_vectors(sender)
        elif model is Features:
            joint = self.feature_maps(sender)
        elif model is Job:
            joint = self.job_maps()
        elif model is Capture:
            joint = self.frames()
        required, optional = {}, {}
        for name, f in model.model_fields.items():
            if name in ("shape", "encoding", "data") and model in (Features, Capture):
                continue
            if name in ("encoding", "maps", "shapes") and model is Job:
                continue
            s = made[name] if name in made else self.schema(f.annotation, f.metadata)
            (required if f.is_required() else optional)[name] = s
        fields = st.tuples(st.fixed_dictionaries(required, optional=optional), joint)
        out = fields.map(lambda t: self.valid(model, {**t[0], **t[1]})).filter(
            lambda m: m is not None
        )
        self._cache[key] = out
        return out

    def valid(self, model: type, fields: dict[str, Any]) -> Message | None:
        """The message of `fields`, if it is valid on the wire: it constructs, and its
        payload is within the size a reader takes."""
        try:
            m = model(**fields)
        except ValidationError:
            self.invalid += 1
            return None
        if len(encode(m)) > MAX_PAYLOAD:
            self.invalid += 1
            return None
        return m

    def delivery(self, kind: str) -> st.SearchStrategy[tuple[str, str, Message]]:
        """(account, topic, message) of `kind`: mostly on a topic of that kind, from an account
        granted it, its sender the topic's; one in eight on any topic any account may write
        (which its topic check then refuses), from any role."""
        routes = self.routes[kind]

        @st.composite
        def one(draw: st.DrawFn) -> tuple[str, str, Message]:
            if not routes or draw(ONE_IN_8):
                account, topic = draw(st.sampled_from(self.anywhere))
                sender = draw(st.sampled_from(self.roles))
            else:
                account, topic, named = draw(st.sampled_from(routes))
                sender = named or draw(st.sampled_from(self.roles))
            return account, topic, draw(self.message(kind, sender))

        return one()
