import numpy as np
import pytest

from ddnn.core.exits import (
    POLICIES,
    ExitInputs,
    ExitPoint,
    Policy,
    cascade,
    get_policy,
    normalized_entropy,
    softmax,
    step,
)
from ddnn.core.fusion import ScoreFusion


def exits(policy: Policy, probs: np.ndarray, threshold: float) -> np.ndarray:
    """Which rows of `probs` exit under `policy` at `threshold` (the scores are log p, whose
    softmax is p again; a non-finite p stays non-finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inputs = ExitInputs(np.log(probs))
        return policy.exits(policy.statistic(inputs), inputs.probs, threshold)


def test_entropy_of_uniform_is_one_and_of_one_hot_is_zero():
    for k in (2, 3, 10):
        assert normalized_entropy(np.full((1, k), 1 / k))[0] == pytest.approx(1.0)
        one_hot = np.eye(k)[:1]
        assert normalized_entropy(one_hot)[0] == 0.0


def test_entropy_lies_in_unit_interval_and_orders_confidence():
    p = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.34, 0.33, 0.33]])
    eta = normalized_entropy(p)
    assert ((eta >= 0) & (eta <= 1)).all()
    assert eta[0] < eta[1] < eta[2]


def test_softmax_is_stable_for_huge_scores():
    p = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0)


def test_threshold_zero_never_exits_on_uncertain_and_one_always_exits():
    entropy = get_policy("entropy")
    p = np.array([[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    assert exits(entropy, p, 0.0).tolist() == [False, False]
    assert exits(entropy, p, 1.0).tolist() == [True, True]


def test_max_prob_and_margin_criteria():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert exits(POLICIES["max_prob"], p, 0.5).tolist() == [True, False]
    assert exits(POLICIES["margin"], p, 0.3).tolist() == [True, False]


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown exit policy 'bogus'"):
        get_policy("bogus")


def test_cascade_exits_confident_samples_early_and_last_exit_always_decides():
    entropy = get_policy("entropy")
    local = np.array([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]])
    cloud = np.array([[0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    points = [ExitPoint("local", entropy, 0.5), ExitPoint("cloud", entropy, 0.0)]
    d = cascade(points, {"local": ExitInputs(np.log(local)), "cloud": ExitInputs(np.log(cloud))})
    assert d.exit_index.tolist() == [0, 1]
    assert d.predictions[0] == 0  # decided locally
    assert d.statistic[1] == pytest.approx(1.0)  # the uncertain cloud still decided


def test_a_step_fuses_what_arrived_and_decides_exit_or_escalate():
    """One step of the cascade, as the live aggregator runs it for one sample and offline
    evaluation for many: fusion over the present inputs only, then the exit rule."""
    entropy = get_policy("entropy")
    point = ExitPoint("local", entropy, 0.5)
    scores = np.array([[[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]], [[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]]])
    present = np.array([[True, False], [True, True]])
    s = step(point, ExitInputs(scores, present, ScoreFusion("AP", 2)), last=False)
    assert s.probs.argmax(axis=1).tolist() == [0, 0]
    assert s.exits.tolist() == [True, False]  # alone, device 0 is sure; averaged, unsure
    assert step(point, ExitInputs(scores, present, ScoreFusion("AP", 2)), last=True).exits.all()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_non_finite_probabilities_never_count_as_confident(name):
    """NaN has entropy 0 as computed (0 log 0 = 0): without the check it would exit at once."""
    probs = np.array([[np.nan, 0.5, 0.5], [1.0, 0.0, 0.0], [np.inf, 0.0, 0.0]])
    assert exits(get_policy(name), probs, 1.0 if name == "entropy" else 0.0).tolist() == [
        False,
        True,
        False,
    ]


def test_a_drop_threshold_ends_hopeless_samples_where_they_are():
    """The exit-placement paper: beyond the drop threshold a sample abstains at that exit; between
    the exit threshold and the drop it escalates; the last exit still decides the rest."""
    entropy = get_policy("entropy")
    local = np.array([[0.98, 0.01, 0.01], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33]])
    cloud = np.array([[0.1, 0.8, 0.1]] * 3)
    points = [ExitPoint("local", entropy, 0.3, drop=0.95), ExitPoint("cloud", entropy, 0.0)]
    d = cascade(points, {"local": ExitInputs(np.log(local)), "cloud": ExitInputs(np.log(cloud))})
    assert d.exit_index.tolist() == [0, 1, 0]
    assert d.abstained.tolist() == [False, False, True]
    assert d.predictions[:2].tolist() == [0, 1]
    plain = [ExitPoint("local", entropy, 0.3), points[1]]
    d = cascade(plain, {"local": ExitInputs(np.log(local)), "cloud": ExitInputs(np.log(cloud))})
    assert not d.abstained.any() and d.exit_index.tolist() == [0, 1, 1]
