"""The learned router (the learned-router paper): its features, its NumPy forward pass against the
torch module that trains it, its fitting, its config, and `ddnn router`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnn.core.config import load_config
from ddnn.core.errors import ConfigError, ModelFileError
from ddnn.core.exits import ExitInputs, exit_points
from ddnn.core.fusion import ScoreFusion
from ddnn.core.routing import Router, n_features, route_features
from ddnn.nn.evaluate import numpy_state
from ddnn.nn.router import RouterNet, fit_router, routing_oracle
from tests.helpers import ddnn, ddnn_json


def fused_inputs(n: int = 50, seed: int = 0) -> ExitInputs:
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 2, (n, 6, 3)).astype(np.float32)
    present = rng.random((n, 6)) < 0.7
    present[:, 0] = True
    return ExitInputs(scores, present, ScoreFusion("MP", 6))


def trained_router(seed: int = 0) -> tuple[RouterNet, Router]:
    net = RouterNet(3, 16)
    inputs = fused_inputs(400, seed)
    oracle = (inputs.probs.max(axis=1) < 0.6).astype(np.float64)
    fit_router(net, route_features(inputs), oracle, load_config().router, seed=seed)
    return net, Router(numpy_state(net), 3, "test")


def test_features_of_a_fused_exit_by_hand():
    scores = np.zeros((1, 3, 3), dtype=np.float32)
    scores[0, 0] = [4.0, 0.0, 0.0]  # device 0: class 0
    scores[0, 1] = [0.0, 3.0, 0.0]  # device 1: class 1
    scores[0, 2] = [9.0, 9.0, 9.0]  # absent: must not count
    inputs = ExitInputs(scores, np.array([[True, True, False]]), ScoreFusion("MP", 3))
    f = route_features(inputs)[0]
    assert f.shape == (n_features(3),) == (3 + 1 + 2 + 2,)
    p = inputs.probs[0]
    assert f[:3] == pytest.approx(p) and p.argmax() == 0  # MP: [4, 3, 0]
    assert f[4] == pytest.approx(p[0] - p[1]) and f[5] == pytest.approx(p[0] - p[2])
    assert f[6] == pytest.approx(2 / 3)  # two of three inputs present
    assert f[7] == pytest.approx(1 / 2)  # one of the two present agrees with the fused class


def test_numpy_router_computes_what_the_torch_module_computes():
    net, router = trained_router()
    inputs = fused_inputs(200, seed=5)
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(route_features(inputs)))).numpy()
    assert router.escalation(inputs) == pytest.approx(expected, abs=1e-12)


def test_a_sample_routed_alone_gets_the_bits_it_gets_in_a_batch():
    """The live aggregator routes one sample at a time; offline evaluation, thousands."""
    _, router = trained_router()
    inputs = fused_inputs(64, seed=7)
    batch = router.escalation(inputs)
    for i in range(len(batch)):
        one = ExitInputs(inputs.scores[i : i + 1], inputs.present[i : i + 1], inputs.fusion)
        assert router.escalation(one)[0] == batch[i]


def test_the_router_learns_its_oracle_and_keeps_the_coverage_it_is_asked_for():
    _, router = trained_router()
    inputs = fused_inputs(400, seed=11)
    oracle = inputs.probs.max(axis=1) < 0.6
    r = router.escalation(inputs)
    assert r[oracle].mean() > r[~oracle].mean() + 0.3
    # Against an oracle that escalates everything, only the coverage penalty keeps samples.
    spec = load_config().router
    for penalty, coverage, kept_at_least in ((0.0, 0.7, 0.0), (20.0, 0.5, 0.4), (20.0, 0.9, 0.8)):
        net = RouterNet(3, 16)
        strict = spec.model_copy(update={"penalty": penalty})
        fit_router(net, route_features(inputs), np.ones(len(r)), strict, coverage)
        kept = 1 - Router(numpy_state(net), 3, "t").escalation(inputs).mean()
        assert kept_at_least <= kept <= max(kept_at_least, 0.05) + 0.15, (penalty, coverage)


def test_routing_oracle_marks_only_what_the_next_tier_fixes():
    this = np.eye(3)[[0, 1, 2, 0]]
    after = np.eye(3)[[0, 0, 1, 1]]
    labels = np.array([0, 0, 1, 2])
    # right here / fixed above / fixed above / wrong at both
    assert routing_oracle(this, after, labels).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_bad_router_weights_are_refused_by_name():
    good = numpy_state(RouterNet(3, 8))
    with pytest.raises(ModelFileError, match="out.bias.*missing"):
        Router({k: v for k, v in good.items() if k != "out.bias"}, 3, "r")
    with pytest.raises(ModelFileError, match="mean has shape"):
        Router(good | {"mean": np.zeros(5)}, 3, "r")
    with pytest.raises(ModelFileError, match="not all finite"):
        Router(good | {"hidden.bias": np.full(8, np.nan)}, 3, "r")
    with pytest.raises(ModelFileError, match="holds no router"):
        cfg = load_config(None, ["exits.local.policy=router"])
        exit_points(cfg, cfg.model.exits, {})


def test_policy_config():
    with pytest.raises(ConfigError, match="the last exit .cloud. always decides"):
        load_config(None, ["exits.cloud.policy=router"])
    with pytest.raises(ConfigError, match="exits.local.policy"):
        load_config(None, ["exits.local.policy=coin"])
    with pytest.raises(ConfigError, match="a drop threshold belongs to an exit that would"):
        load_config(None, ["exits.cloud.drop=0.9"])
    with pytest.raises(ConfigError, match="a drop threshold needs a policy on the exit's own"):
        load_config(None, ["exits.local.policy=router", "exits.local.drop=0.9"])
    older = load_config(None, ["exits.local.criterion=max_prob"])  # model files before routers
    assert older.exits["local"].policy == "max_prob"
    assert older.model_dump()["exits"]["local"] == {
        "policy": "max_prob",
        "threshold": 0.8,
        "drop": None,
    }


def test_router_command_compares_at_equal_coverage(hybrid):
    """On a tiny model: rows at each coverage, with both policies' test exit shares near it."""
    document = ddnn_json("router", "--model", str(hybrid), "--coverages", "0.6,0.8")
    assert document["exit"] == "local" and document["next"] == "edge"
    assert [r["coverage"] for r in document["rows"]] == [0.6, 0.8]
    for row in document["rows"]:
        assert set(row) == {
            "coverage", "entropy_accuracy", "router_accuracy", "entropy_exit", "router_exit",
        }  # fmt: skip
        assert abs(row["entropy_exit"] - 100 * row["coverage"]) <= 15
        assert abs(row["router_exit"] - 100 * row["coverage"]) <= 15


def test_eval_refuses_a_drop_threshold_on_an_exit_a_router_decides(hybrid):
    """`--threshold` and `--drop` are checked as a config file's exits are: a router's
    statistic says where a sample should go, not whether it is hopeless."""
    proc = ddnn("eval", "--model", str(hybrid), "--drop", "local=0.5", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--threshold/--drop" in proc.stderr and "drop threshold needs a policy" in proc.stderr
    assert "Traceback" not in proc.stderr
    # on an exit with a rule on its own confidence it applies, as before (the local exit keeps
    # its router's calibrated threshold: one picked by hand on a router's statistic may send
    # every sample out locally, leaving none to abstain at the edge)
    report = ddnn_json(
        "eval", "--model", str(hybrid), "--drop", "edge=0.1", "--threshold", "edge=0.5"
    )
    assert report["abstained"]["edge"] > 0 and "local" not in report["abstained"]
