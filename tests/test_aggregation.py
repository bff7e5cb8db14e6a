import pytest
import torch

from ddnn.nn.fusion import Aggregator, avg_pool, concat, max_pool


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
    agg = Aggregator("CC", n_inputs=3, out_features=2)
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
    agg = Aggregator(scheme, n_inputs=2, out_features=3)
    out = agg(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
    assert torch.isfinite(out).all()
