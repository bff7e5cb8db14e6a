"""Roles: one type, one spelling each."""

import pytest

from ddnn.core.config import load_config
from ddnn.core.roles import AGGREGATOR, CLOUD, Role, deployment_roles, tier_inputs


def test_a_role_knows_its_tier_and_index():
    assert Role("device-3") == Role.device(3) == "device-3"
    assert (Role.device(3).tier, Role.device(3).index) == ("device", 3)
    assert (Role.edge(0).tier, Role.edge(0).index) == ("edge", 0)
    assert (CLOUD.tier, CLOUD.index, AGGREGATOR.tier, AGGREGATOR.index) == (
        "cloud",
        None,
        "aggregator",
        None,
    )
    assert Role(Role.device(9999)) == "device-9999"


@pytest.mark.parametrize(
    "name", ["device-03", "device-0003", "device-10000", "Device-3", "device--3", "edge", "demo"]
)
def test_only_the_canonical_spelling_is_a_role(name):
    with pytest.raises(ValueError, match="is not a role"):
        Role(name)


@pytest.mark.parametrize("index", [-1, 1.0, True, "3"])
def test_indices_are_non_negative_integers(index):
    with pytest.raises(ValueError):
        Role.device(index)


def test_the_roles_of_a_deployment():
    model = load_config(overrides=["model.edge={groups: [[0,1,2],[3,4,5]]}"]).model
    roles = deployment_roles(model)
    assert roles == [*(f"device-{i}" for i in range(6)), "aggregator", "edge-0", "edge-1", "cloud"]
    assert deployment_roles(model, devices=2)[:3] == ["device-0", "device-1", "aggregator"]
    assert tier_inputs(model, Role.edge(1)) == ["device-3", "device-4", "device-5"]
    assert tier_inputs(model, CLOUD) == ["edge-0", "edge-1"]
    assert tier_inputs(load_config().model, CLOUD) == [f"device-{i}" for i in range(6)]
