"""The roles of a deployment: `device-<i>`, `edge-<e>`, `cloud` and `aggregator`, and
`capture` where the deployment captures hard examples (opt-in: docs/design/capture.md).

A role names one live service: its artifact in an export, its topics on the wire, its process
in a fleet. `Role` is the one type for them all: a `str` (so it goes into topic names, file
names and messages as it is) that exists only in canonical form. `device-3` is a role;
`device-03`, `device-0003`, `Device-3` and `device--3` are not, so two spellings can never
name one device. Indices run from 0 to 9999.
"""

from __future__ import annotations

import re

from ddnn.core.config import FeatureFormat, ModelConfig

MAX_INDEX = 9999
PATTERN = r"(?:device|edge)-(?:0|[1-9][0-9]{0,3})|cloud|aggregator|capture"
_CANONICAL = re.compile(PATTERN)


class Role(str):
    """A role name in canonical form; `Role("device-03")` raises ValueError."""

    __slots__ = ()

    def __new__(cls, name: str) -> Role:
        if isinstance(name, Role):
            return name
        if not isinstance(name, str) or not _CANONICAL.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a role: device-<i>, edge-<e> (i, e in 0..{MAX_INDEX}, "
                "no leading zeros), cloud, aggregator or capture"
            )
        return super().__new__(cls, name)

    @classmethod
    def device(cls, index: int) -> Role:
        return cls._indexed("device", index)

    @classmethod
    def edge(cls, index: int) -> Role:
        return cls._indexed("edge", index)

    @classmethod
    def _indexed(cls, tier: str, index: int) -> Role:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"a {tier} index is an integer 0..{MAX_INDEX}, got {index!r}")
        return cls(f"{tier}-{index}")

    @property
    def tier(self) -> str:
        """ "device", "edge", "cloud", "aggregator" or "capture": also the service's `ddnn`
        command."""
        return self.partition("-")[0]

    @property
    def index(self) -> int | None:
        """The device's or the edge's number; None for the other roles."""
        _, sep, index = self.partition("-")
        return int(index) if sep else None


AGGREGATOR = Role("aggregator")
CLOUD = Role("cloud")
CAPTURE = Role("capture")  # not among `deployment_roles`: a deployment opts in to it


def deployment_roles(model: ModelConfig, devices: int | None = None) -> list[Role]:
    """Every role a deployment of `model` runs (the first `devices` devices), devices first."""
    n = model.n_devices if devices is None else devices
    roles = [Role.device(i) for i in range(n)] + [AGGREGATOR]
    if model.edge is not None:
        roles += [Role.edge(e) for e in range(len(model.edge.groups))]
    if model.cloud is not None:
        roles.append(CLOUD)
    return roles


def tier_inputs(model: ModelConfig, role: Role) -> list[Role]:
    """The roles whose feature maps an upper tier (an edge or the cloud) fuses, in the order
    of its input slots: an edge's group of devices; the cloud's edges, or every device."""
    if role.tier == "edge":
        assert model.edge is not None and role.index is not None
        return [Role.device(d) for d in model.edge.groups[role.index]]
    if model.edge is not None:
        return [Role.edge(e) for e in range(len(model.edge.groups))]
    return [Role.device(d) for d in range(model.n_devices)]


def upper_tiers(model: ModelConfig) -> list[str]:
    """The tiers above the devices that fuse feature maps, lowest first: "edge", "cloud"."""
    return [tier for tier, spec in (("edge", model.edge), ("cloud", model.cloud)) if spec]


def fed_tier(model: ModelConfig, role: Role) -> str | None:
    """The tier whose fusion takes `role`'s feature maps (the inverse of `tier_inputs`): a
    device's edges, else the cloud; an edge's, the cloud; None where none does."""
    above = upper_tiers(model)
    if role.tier == "device" and above:
        return above[0]
    if role.tier == "edge" and "cloud" in above:
        return "cloud"
    return None


def tier_input_format(model: ModelConfig, role: Role) -> FeatureFormat:
    """How the feature maps an upper tier fuses travel: the devices' format for an edge and
    for a cloud fed by devices, the edges' for a cloud fed by edges."""
    if role.tier == "cloud" and model.edge is not None:
        return model.edge_feature_format
    return model.device_feature_format
