"""Bounded influence (issue 27): device scores beyond the export's bound are refused, and the
trimmed fusion keeps one lying device from deciding a sample alone."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aggregator.cli import robust
from aggregator.service import AggregatorService, Deadlines
from aggregator.weights import load_exit_weights
from ddnn.core.fusion import ScoreFusion
from ddnn.core.manifest import Manifest, read_manifest
from ddnn.core.roles import Role
from ddnn.live.bounds import BEYOND, ScoreBounds
from ddnn.live.wire import MAX_SCORE, Status, Tick
from ddnn.nn.bounds import FLOOR
from ddnn.nn.studies.byzantine import lying_scores
from tests.inprocess import DEPLOYMENT, LATER, SURE, Rig, aggregator_rig, scores

C = 3


def _fusions(n: int, seed: int = 0) -> list[ScoreFusion]:
    rng = np.random.default_rng(seed)
    weight, bias = rng.normal(size=(C, n * C)), rng.normal(size=C)
    return [ScoreFusion("MP", n), ScoreFusion("AP", n), ScoreFusion("CC", n, weight, bias)]


def _contributions(f: ScoreFusion, x: np.ndarray) -> np.ndarray:
    """(n, C) what each input adds to each class, by the definition (not the code's loop)."""
    if f.scheme != "CC":
        return x
    assert f.weight is not None
    return np.stack([f.weight[:, i * C : (i + 1) * C] @ x[i] for i in range(len(x))])


# -- the bound -------------------------------------------------------------------------


def test_the_export_bounds_each_senders_scores_near_what_training_saw(plain):
    bounds = read_manifest(plain).score_bounds
    assert set(bounds) == {*(f"device-{d}" for d in range(6)), "cloud"}
    assert all(FLOOR <= b < 1000 for b in bounds.values()), bounds  # not the wire's 1e6


def test_an_export_without_bounds_still_loads_and_keeps_the_wires(plain):
    """A manifest written before bounds existed: read as none, scores held to MAX_SCORE."""
    text = (plain / "manifest.json").read_text()
    old = Manifest.model_validate_json(text).model_dump(exclude={"score_bounds"})
    manifest = Manifest.model_validate(old)
    assert manifest.score_bounds == {}
    assert ScoreBounds.of(manifest).bound("device-0") == MAX_SCORE
    ScoreBounds.of(manifest).check("device-0", np.array([1e5, -1e5, 0.0]))  # as before


def test_device_scores_beyond_the_bound_are_refused_counted_and_the_others_decide(plain):
    """1e5 passes the wire (MAX_SCORE 1e6) but not device 0's bound: refused under one
    reason, and the sample is decided by devices 1-5 when the deadline passes, not forced
    to device 0's class."""
    rig, agg = aggregator_rig(plain)
    rig.send(Tick(sample=3, t=time.time()))
    rig.send(scores(3, Role.device(0), [-1e5, 1e5, -1e5]))
    rig.send(scores(3, Role.device(0), [1e5, -1e5, -1e5]))  # a second try: refused too
    for d in range(1, 6):
        rig.send(scores(3, Role.device(d), SURE))
    rig.settle(later=LATER)
    [d] = rig.decisions()
    assert (d.decided, d.class_index, d.exit) == (True, 0, "local")
    assert d.devices == [1, 2, 3, 4, 5]
    assert agg.rejected[BEYOND] == 2 and agg.pending == {}


# -- the trimmed fusion ----------------------------------------------------------------


@pytest.mark.parametrize("n_present", [1, 2])
def test_with_two_devices_or_fewer_the_trimmed_fusion_is_the_plain_one(n_present):
    rng = np.random.default_rng(1)
    x = rng.normal(scale=5, size=(50, 6, C))
    present = np.zeros((50, 6), dtype=bool)
    for row in present:
        row[rng.choice(6, n_present, replace=False)] = True
    for f in _fusions(6):
        np.testing.assert_array_equal(f.trimmed()(x, present), f(x, present), f.scheme)


def test_trimming_what_no_device_stands_out_in_leaves_mp_and_ap_as_they_were():
    """MP: each device's scores given twice (pairs of cameras that agree), so the highest
    left out has its twin. AP: the devices spread evenly about their mean, so the highest
    and lowest left out balance. Neither the maximum nor the mean moves."""
    rng = np.random.default_rng(2)
    half = rng.normal(scale=5, size=(40, 3, C))
    present = np.ones((40, 6), dtype=bool)
    mp, ap, _ = _fusions(6)
    twins = np.concatenate([half, half], axis=1)
    np.testing.assert_array_equal(mp.trimmed()(twins, present), mp(twins, present))
    spread = np.array([-3.0, -1.0, 0.0, 0.0, 1.0, 3.0])[None, :, None] * rng.random((40, 1, C))
    even = rng.normal(scale=5, size=(40, 1, C)) + spread
    np.testing.assert_allclose(ap.trimmed()(even, present), ap(even, present), atol=1e-12)
    assert not np.allclose(ap.trimmed()(twins, present), ap(twins, present))  # it does trim


def test_one_device_moves_a_trimmed_class_no_further_than_the_others_span():
    """Whatever device 0 sends (here up to +-1e3), each class of the trimmed fusion stays
    between what the five honest devices alone allow (order statistics: the sum of the
    smallest and the largest n-2 honest contributions); the plain fusion goes where the
    liar drives it."""
    rng = np.random.default_rng(3)
    n, samples = 6, 200
    honest = rng.normal(scale=4, size=(samples, n, C))
    x = honest.copy()
    x[:, 0] = rng.choice([-1e3, 1e3], size=(samples, C)) * rng.random((samples, C))
    present = np.ones((samples, n), dtype=bool)
    for f in _fusions(n):
        got = f.trimmed()(x, present)
        plain = f(x, present)
        for k in range(samples):
            h = np.sort(_contributions(f, honest[k])[1:], axis=0)  # (n-1, C), ascending
            lo, hi = h[: n - 2].sum(axis=0), h[1:].sum(axis=0)
            if f.scheme == "MP":
                lo, hi = h[n - 3], h[n - 2]
            elif f.scheme == "AP":
                lo, hi = lo / (n - 2), hi / (n - 2)
            else:
                assert f.bias is not None
                lo, hi = lo + f.bias, hi + f.bias
            assert np.all(got[k] >= lo - 1e-9) and np.all(got[k] <= hi + 1e-9), (f.scheme, k)
        assert np.abs(plain).max() > 100, f.scheme  # ... while the plain one follows the liar


def test_a_lying_device_at_its_bound_decides_under_the_plain_fusion_not_the_trimmed(plain):
    """Live: device 0 sends the next class at +-its bound, the five others a moderately sure
    class 0. MP follows the liar to a confident local exit; trimmed MP (`ddnn aggregator
    --robust-fusion`) decides class 0."""
    manifest, weights = load_exit_weights(plain)
    bound = ScoreBounds.of(manifest).bound("device-0")
    lie = lying_scores(np.array([0]), C, bound)[0].tolist()
    decided = []
    for w in (weights, robust(weights)):
        rig = Rig(manifest)
        for d in range(6):
            rig.send(Status(role=Role.device(d), state="online", t=time.time()), retain=True)
        agg = AggregatorService(manifest, w, rig.bus, DEPLOYMENT, Deadlines())
        rig.add(agg)
        rig.send(Tick(sample=5, t=time.time()))
        rig.send(scores(5, Role.device(0), lie))
        for d in range(1, 6):
            rig.send(scores(5, Role.device(d), [6.0, -6.0, -6.0]))
        rig.settle(later=LATER)
        [d] = rig.decisions()
        decided.append((d.class_index, d.exit, d.devices))
        assert not agg.rejected  # within the bound: taken, and outvoted or not
    assert decided[0] == (1, "local", list(range(6)))
    assert decided[1][0] == 0 and decided[1][2] == list(range(6))


def test_the_trimmed_fusion_follows_the_config_and_runs_offline_as_live(plain):
    """`local.robust` in the config trims the local exit wherever score_fusions builds it
    (the aggregator's artifact, offline evaluation); `robust=` overrides it."""
    from ddnn.core.fusion import score_fusions
    from ddnn.core.manifest import read_npz_artifact

    manifest = read_manifest(plain)
    model = manifest.ddnn_config().model
    arrays = read_npz_artifact(plain, manifest, "aggregator")
    assert not score_fusions(model, arrays)["local"].trim
    assert model.local is not None
    on = model.model_copy(update={"local": model.local.model_copy(update={"robust": True})})
    assert score_fusions(on, arrays)["local"].trim
    assert not score_fusions(on, arrays, robust=False)["local"].trim
    assert "edge" not in score_fusions(on, arrays) or not score_fusions(on, arrays)["edge"].trim


def test_lying_scores_under_cc_aim_at_the_fused_class_not_the_liars_own():
    """A one-hot lie goes wherever CC's layer maps it; the liar's scores are picked by the
    layer's weights, so that its contribution favours the wrong class."""
    rng = np.random.default_rng(4)
    block = rng.normal(size=(C, C))
    labels = np.arange(C)
    lies = lying_scores(labels, C, 10.0, block)
    assert np.all(np.abs(lies) == 10.0)
    for y, lie in zip(labels, lies, strict=True):
        wrong = (y + 1) % C
        contribution = block @ lie
        others = [k for k in range(C) if k != wrong]
        assert contribution[wrong] - contribution[others].mean() >= 0


def test_eval_measures_what_the_trimmed_fusion_costs_on_clean_data(plain):
    """`ddnn eval --robust-fusion` reports the cascade under the trimmed local fusion, the
    one the aggregator runs with --robust-fusion: its clean accuracy and exits beside the
    plain fusion's."""
    from ddnn.nn.evaluate import evaluate, load_for_eval, model_exit_points, run_model
    from tests.helpers import ddnn_json

    model, cfg, _, test = load_for_eval(plain)
    points = model_exit_points(model, cfg)
    want = evaluate(run_model(model, test, robust=True), points)
    got = ddnn_json("eval", "--model", str(plain), "--robust-fusion")
    assert (got["accuracy"], got["exit_fraction"]) == (want["accuracy"], want["exit_fraction"])
    untrimmed = evaluate(run_model(model, test), points)
    assert want["exit_fraction"]["local"] != untrimmed["exit_fraction"]["local"]
