"""Fusion of several inputs: the torch modules training uses, and the NumPy fusion of class
scores that the live aggregator and offline evaluation run on the same weights."""

import numpy as np
import pytest
import torch

from ddnn.core.config import load_config
from ddnn.core.errors import ModelFileError
from ddnn.core.fusion import ScoreFusion, score_fusions
from ddnn.nn.fusion import Fusion, avg_pool, concat, max_pool
from ddnn.nn.model import DDNN


@pytest.fixture
def scores():
    # one sample, three devices, two classes
    return torch.tensor([[[1.0, -2.0], [5.0, 0.0], [-1.0, 3.0]]])


def test_max_pool_ignores_missing_devices(scores):
    present = torch.tensor([[True, False, True]])
    assert max_pool(scores, present).tolist() == [[1.0, 3.0]]


def test_max_pool_over_negative_scores_is_not_fooled_by_a_missing_zero():
    x = torch.tensor([[[-3.0, -1.0], [0.0, 0.0]]])
    assert max_pool(x, torch.tensor([[True, False]])).tolist() == [[-3.0, -1.0]]


def test_avg_pool_averages_present_devices_only(scores):
    present = torch.tensor([[True, False, True]])
    assert avg_pool(scores, present).tolist() == [[0.0, 0.5]]
    all_present = avg_pool(scores, torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(all_present, torch.tensor([[5 / 3, 1 / 3]]))


def test_concat_zero_fills_missing_slots(scores):
    present = torch.tensor([[True, False, True]])
    assert concat(scores, present).tolist() == [[1.0, -2.0, 0.0, 0.0, -1.0, 3.0]]


def test_concat_of_feature_maps_stacks_channels():
    maps = torch.randn(2, 3, 4, 5, 5)
    fused = concat(maps, torch.ones(2, 3, dtype=torch.bool))
    assert fused.shape == (2, 12, 5, 5)
    assert torch.equal(fused[:, 4:8], maps[:, 1])


def test_cc_aggregator_maps_back_to_class_count_and_trains_all_inputs():
    agg = Fusion("CC", n_inputs=3, out_features=2)
    x = torch.randn(4, 3, 2, requires_grad=True)
    out = agg(x, torch.ones(4, 3, dtype=torch.bool))
    assert out.shape == (4, 2)
    out.sum().backward()
    assert (x.grad.abs().sum(dim=(0, 2)) > 0).all()


def test_mp_gradient_reaches_only_the_winning_device():
    x = torch.tensor([[[1.0], [2.0]]], requires_grad=True)
    max_pool(x, torch.ones(1, 2, dtype=torch.bool)).sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("scheme", ["MP", "AP", "CC"])
def test_aggregators_give_finite_output_when_nothing_is_present(scheme):
    agg = Fusion(scheme, n_inputs=2, out_features=3)
    out = agg(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
    assert torch.isfinite(out).all()


# --- the NumPy fusion of class scores (the live aggregator's, and offline evaluation's) -----


def random_scores(n: int = 64, inputs: int = 6, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(n, inputs, classes)) * 5).astype(np.float32)
    present = rng.random((n, inputs)) < 0.6
    present[0] = False  # nothing present
    present[1] = True
    return scores, present


def numpy_fusion(module: Fusion) -> ScoreFusion:
    """The NumPy fusion with the weights of a torch `Fusion` over class scores."""
    if module.linear is None:
        return ScoreFusion(module.scheme, module.n_inputs)
    weight = module.linear.weight.detach().numpy()
    return ScoreFusion(module.scheme, module.n_inputs, weight, module.linear.bias.detach().numpy())


@pytest.mark.parametrize("scheme", ["MP", "AP", "CC"])
def test_numpy_fusion_computes_what_the_torch_fusion_computes(scheme):
    torch.manual_seed(0)
    module = Fusion(scheme, n_inputs=6, out_features=3)
    scores, present = random_scores()
    with torch.no_grad():
        want = module(torch.from_numpy(scores), torch.from_numpy(present)).numpy()
    got = numpy_fusion(module)(scores, present)
    if scheme == "MP":
        assert np.array_equal(got, want)  # a max rounds nothing
    else:  # torch sums in float32, NumPy in float64: equal within float32 rounding
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["MP", "AP", "CC"])
def test_numpy_fusion_gives_the_same_bits_alone_and_in_a_batch(scheme):
    """The live aggregator fuses one sample at a time, offline evaluation a whole set."""
    torch.manual_seed(1)
    fusion = numpy_fusion(Fusion(scheme, n_inputs=6, out_features=3))
    scores, present = random_scores(seed=1)
    batch = fusion(scores, present)
    alone = np.concatenate([fusion(scores[i : i + 1], present[i : i + 1]) for i in range(64)])
    assert np.array_equal(batch.view(np.uint64), alone.view(np.uint64))


def test_score_fusions_take_the_weights_of_the_model_state():
    cfg = load_config(
        overrides=["model.local.aggregation=CC", "model.edge={groups: [[0,1,2],[3,4,5]]}"]
    ).model
    model = DDNN(cfg)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    fusions = score_fusions(cfg, state)
    assert set(fusions) == {"local", "edge"}
    assert np.array_equal(fusions["local"].weight, model.local.linear.weight.detach().numpy())
    assert fusions["edge"].scheme == "MP" and fusions["edge"].n_inputs == 2
    state["local.linear.weight"] = state["local.linear.weight"][:, :9]
    with pytest.raises(ModelFileError, match="local.linear"):
        score_fusions(cfg, state)
