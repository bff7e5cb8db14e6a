"""Who reads and writes which channel: the one table of the wire protocol's parties.

`PROTOCOL` gives each kind of account (a service's tier, or `trigger`) the channels it reads
and writes, whose topics of each, and in which mode of the deployment (`When`). Everything
else follows from it: a service's MQTT subscriptions (`subscriptions`) and the message kinds
it dispatches to its handlers (`read_kinds`, ddnn/live/service.py), the broker accounts'
grants (ddnn/live/access.py, and so the mosquitto and EMQX ACLs and the bridge) and the
AsyncAPI document (ddnn/live/asyncapi.py). The message kind each channel carries is the
wire's `CHANNELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ddnn.core.config import ModelConfig
from ddnn.core.roles import CLOUD, Role, fed_tier, tier_inputs, upper_tiers
from ddnn.live.wire import CHANNELS, Topics, _Message


class Whose(Enum):
    """Which topics of a channel a use covers."""

    CHANNEL = "the channel's one topic"  # tick, job, decisions
    OWN = "the party's own"  # <channel>/<its role>
    EVERY = "every role's"  # <channel>/+
    INPUTS = "its tier inputs'"  # <channel>/<r>, each role whose maps this tier fuses
    CLOUD_INPUTS = "the cloud's inputs'"  # what the aggregator gathers for cloud replicas
    # a channel per tier above the devices (offload/edge, offload/cloud):
    TIER = "its own tier's"  # <channel>/<its tier>
    FED = "that of the tier it feeds"  # <channel>/<the tier that fuses its maps>
    TIERS = "every upper tier's"  # <channel>/<t>, each tier above the devices


PER_TIER = (Whose.TIER, Whose.FED, Whose.TIERS)  # the uses whose topics end in a tier


class When(Enum):
    """In which mode of the deployment a service uses a channel. Brokers grant every use
    (a REPLICATED one where the model has a cloud), whatever mode a service runs in, but a
    CAPTURING one only where the deployment opts in to capturing hard examples: frames then
    leave the cameras (`granted`)."""

    ALWAYS = "always"
    REPLICATED = "while the cloud runs as replicas sharing jobs"
    DIRECT = "while it does not"
    CAPTURING = "while the deployment captures hard examples"


@dataclass(frozen=True)
class Use:
    channel: str  # a key of CHANNELS
    whose: Whose = Whose.CHANNEL
    when: When = When.ALWAYS


@dataclass(frozen=True)
class Part:
    reads: tuple[Use, ...]
    writes: tuple[Use, ...]


OWN, EVERY, INPUTS = Whose.OWN, Whose.EVERY, Whose.INPUTS
TIER, FED = Whose.TIER, Whose.FED
REPLICATED, DIRECT, CAPTURING = When.REPLICATED, When.DIRECT, When.CAPTURING
Protocol = dict[str, Part]
PROTOCOL: Protocol = {
    "device": Part(
        reads=(Use("tick"), Use("offload", FED), Use("decisions", when=CAPTURING)),
        writes=(
            Use("status", OWN),
            Use("scores", OWN),
            Use("features", OWN),
            Use("capture", OWN, CAPTURING),  # the frames of the samples it finds hard
        ),
    ),
    "aggregator": Part(
        reads=(
            Use("status", EVERY),
            Use("tick"),
            Use("scores", EVERY),
            Use("features", Whose.CLOUD_INPUTS, REPLICATED),  # gathered into a job
        ),
        writes=(
            Use("status", OWN),
            Use("offload", Whose.TIERS),
            Use("decisions"),
            Use("job", when=REPLICATED),
        ),
    ),
    "edge": Part(
        reads=(Use("offload", TIER), Use("offload", FED), Use("features", INPUTS)),
        writes=(Use("status", OWN), Use("scores", OWN), Use("features", OWN)),
    ),
    "cloud": Part(
        reads=(
            Use("offload", TIER, DIRECT),
            Use("features", INPUTS, DIRECT),
            Use("job", when=REPLICATED),  # through a shared subscription
        ),
        writes=(Use("status", OWN), Use("scores", OWN)),
    ),
    "trigger": Part(reads=(Use("status", EVERY), Use("decisions")), writes=(Use("tick"),)),
    "capture": Part(
        reads=(Use("capture", EVERY, CAPTURING), Use("decisions", when=CAPTURING)),
        writes=(Use("status", OWN, CAPTURING),),
    ),
}


def topics_of(use: Use, party: str, model: ModelConfig, topics: Topics) -> tuple[str, ...]:
    """The topics (or filters) `use` covers for account `party` (a role, or `trigger`)."""
    match use.whose:
        case Whose.CHANNEL:
            roles: list[str | None] = [None]
        case Whose.OWN:
            roles = [party]
        case Whose.EVERY:
            roles = ["+"]
        case Whose.INPUTS:
            roles = [*tier_inputs(model, Role(party))]
        case Whose.CLOUD_INPUTS:
            roles = [*tier_inputs(model, CLOUD)]
        case Whose.TIER:
            roles = [Role(party).tier]
        case Whose.FED:
            fed = fed_tier(model, Role(party))
            roles = [] if fed is None else [fed]
        case Whose.TIERS:
            roles = [*upper_tiers(model)]
    return tuple(topics.channel(use.channel, r) for r in roles)


def part_of(party: str, protocol: Protocol = PROTOCOL) -> Part:
    """The table's entry of an account: a role goes by its tier."""
    return protocol[party if party in protocol else Role(party).tier]


def granted(use: Use, model: ModelConfig, capture: bool = False) -> bool:
    """Whether brokers grant `use` in a deployment of `model` (`capture`: one that captures
    hard examples)."""
    if use.when is When.CAPTURING:
        return capture
    return use.when is not When.REPLICATED or model.cloud is not None


def in_mode(use: Use, replicated: bool, capturing: bool = False) -> bool:
    """Whether a service makes `use` in its mode: `replicated` (the cloud as replicas),
    `capturing` (it takes part in the capture of hard examples)."""
    if use.when is When.CAPTURING:
        return capturing
    return use.when is When.ALWAYS or (use.when is When.REPLICATED) == replicated


def read_kinds(
    role: Role, replicated: bool, protocol: Protocol = PROTOCOL, capturing: bool = False
) -> set[type[_Message]]:
    """The message kinds a service of `role` takes in its mode: what it must handle."""
    reads = part_of(role, protocol).reads
    return {CHANNELS[u.channel] for u in reads if in_mode(u, replicated, capturing)}


def subscriptions(
    role: Role,
    model: ModelConfig,
    topics: Topics,
    group: str | None = None,
    replicated: bool = False,
    protocol: Protocol = PROTOCOL,
    capturing: bool = False,
) -> list[str]:
    """The topic filters a service of `role` subscribes to. A cloud replica (`group`: its
    replicas' group) takes the jobs through the shared subscription that hands each job to
    one member; `replicated`: the aggregator of such a cloud; `capturing`: a service that
    takes part in the capture of hard examples."""
    replicated = replicated or group is not None
    out: list[str] = []
    for use in part_of(role, protocol).reads:
        if in_mode(use, replicated, capturing):
            if use.channel == "job" and group is not None:
                out.append(topics.shared_jobs(group))
            else:
                out += topics_of(use, role, model, topics)
    return out
