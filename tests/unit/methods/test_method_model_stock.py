"""Model Stock: the interpolation ratio from the offsets' angle, per tensor and per row, and its
singular case."""

import math

import torch

from mergeline.methods.model_stock import interpolation_ratio


def test_ratio_from_the_angle_between_offsets(run_method, vec):
    base = {"w": vec(1.0, 1.0)}
    # offsets (1, 0) and (1, 1): cos = 1/√2, t = 2c / (1 + c); average offset (1, ½)
    out, report, _ = run_method("model_stock", {"w": [vec(2.0, 1.0), vec(2.0, 2.0)]}, base=base)
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    torch.testing.assert_close(out["w"], vec(1 + t, 1 + t / 2))
    assert report == {"method": "model_stock", "filter_wise": False}


def test_orthogonal_and_opposite_offsets_keep_the_base(run_method, vec):
    base = {"w": vec(0.5, -0.5)}
    orthogonal, _, _ = run_method("model_stock", {"w": [vec(1.5, -0.5), vec(0.5, 0.5)]}, base=base)
    assert torch.equal(orthogonal["w"], base["w"])  # cos 0 → t 0
    opposite, _, _ = run_method("model_stock", {"w": [vec(1.5, -0.5), vec(-0.5, -0.5)]}, base=base)
    assert torch.equal(opposite["w"], base["w"])  # 1 + (N − 1) cos = 0: singular, t = 0


def test_three_models_use_the_mean_pairwise_cosine(vec):
    base = torch.zeros(3)
    weights = [vec(1.0, 0.0, 0.0), vec(1.0, 1.0, 0.0), vec(0.0, 1.0, 0.0)]
    c = (1 / math.sqrt(2) + 0.0 + 1 / math.sqrt(2)) / 3
    t = interpolation_ratio(base, weights, filter_wise=False)
    torch.testing.assert_close(t, torch.tensor([3 * c / (1 + 2 * c)]))


def test_filter_wise_gives_one_ratio_per_row(run_method):
    base = torch.zeros(2, 2)
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    out, _, _ = run_method("model_stock", {"w": [a, b]}, base={"w": base}, params={"filter_wise": True})
    # row 0: orthogonal offsets → base; row 1: parallel (cos 1, t 1) → the average (1.5, 0)
    torch.testing.assert_close(out["w"], torch.tensor([[0.0, 0.0], [1.5, 0.0]]))
