"""Premise measurements: task-vector cosines, loss along θ0 + ατ, MetaGPT's quadratic gap, random-mask overlap."""

import math

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.finetune import mask_overlap
from mergeline.importance import loss_along, pairwise_cosines, quadratic_gap, random_mask_overlap


def test_pairwise_cosines_over_the_whole_model():
    a = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([0.0])}
    b = {"x": torch.tensor([1.0, 1.0]), "y": torch.tensor([0.0])}
    c = {"x": torch.tensor([0.0, 0.0]), "y": torch.tensor([2.0])}
    got = pairwise_cosines({"a": a, "b": b, "c": c})
    assert got == pytest.approx({"a|b": 1 / math.sqrt(2), "a|c": 0.0, "b|c": 0.0})
    with pytest.raises(MergelineError, match="two vectors"):
        pairwise_cosines({"a": a})


def test_loss_along_sets_theta0_plus_alpha_tau_and_restores():
    model = torch.nn.Linear(2, 1, bias=False)
    base = {"weight": torch.tensor([[1.0, 2.0]])}
    with torch.no_grad():
        model.weight.copy_(base["weight"])
    tau = {"weight": torch.tensor([[2.0, -2.0]])}
    sq = loss_along(model, base, tau, [0.0, 0.5, 1.0], lambda m: float(m.weight[0, 0]))
    assert sq == pytest.approx({0.0: 1.0, 0.5: 2.0, 1.0: 3.0})
    assert torch.equal(model.weight, base["weight"])
    with pytest.raises(MergelineError, match="not a parameter"):
        loss_along(model, base, {"bias": torch.zeros(1)}, [1.0], lambda m: 0.0)


def test_quadratic_gap_is_exact_on_a_bowl_and_flags_a_line():
    bowl = {a: 1.0 + 4.0 * (1 - a) ** 2 for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    got = quadratic_gap(bowl)
    assert got["max_rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert got["points"]["0.5"] == pytest.approx({"observed": 1.0, "predicted": 1.0})
    line = {a: 1.0 + 4.0 * (1 - a) for a in (0.0, 0.5, 1.0)}
    assert quadratic_gap(line)["max_rel_error"] == pytest.approx(0.25)  # observed 2, predicted 1, span 4
    with pytest.raises(MergelineError, match="α = 0 and α = 1"):
        quadratic_gap({0.5: 1.0})


def test_random_mask_overlap_matches_sampled_masks_and_the_formula():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.rand(200_000, generator=g) < 0.1, "v": torch.rand(100_000, generator=g) < 0.5}
    b = {"w": torch.rand(200_000, generator=g) < 0.1, "v": torch.rand(100_000, generator=g) < 0.5}
    per = random_mask_overlap(a, b)
    # by hand: inter 2e5·0.01 + 1e5·0.25 = 27,000; union 2e5·0.19 + 1e5·0.75 = 113,000
    assert per == pytest.approx(27_000 / 113_000, rel=0.01)
    assert mask_overlap(a, b) == pytest.approx(per, rel=0.02)  # independent masks: what the formula expects
    flat = random_mask_overlap(a, b, per_tensor=False)
    p = 70_000 / 300_000
    assert flat == pytest.approx(p * p / (2 * p - p * p), rel=0.01)
    assert flat < per  # uneven densities across tensors overlap more by chance
    with pytest.raises(MergelineError, match="shapes"):
        random_mask_overlap(a, {"w": torch.ones(3, dtype=torch.bool)})
