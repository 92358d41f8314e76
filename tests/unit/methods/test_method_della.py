"""DELLA / DELLA-linear: MAGPRUNE's rank-linear keep probabilities, the sampled masks (bit-equal to
mergekit's given the same generator state), reproducibility, the merge step, and bad parameters."""

import pytest
import torch

from mergeline.methods.della import keep_probabilities, magprune_mask
from mergeline.methods._sparsify import apply_mask, tensor_seed


def test_keep_probabilities_are_rank_linear_per_row(vec):
    # ranks by magnitude 0, 3, 1, 2 of n = 4: p = (0.5 − 0.1) + 0.2 · r/3
    p = keep_probabilities(vec(0.1, -0.4, 0.2, 0.3), density=0.5, epsilon=0.1)
    torch.testing.assert_close(p, vec(0.4, 0.6, 0.4 + 0.2 / 3, 0.4 + 0.4 / 3))
    rows = keep_probabilities(torch.tensor([[3.0, -1.0, 2.0], [0.2, 0.2, 0.1]]), density=0.5, epsilon=0.1)
    # ties rank by index (stable): the first 0.2 ranks 1, the second 2
    torch.testing.assert_close(rows, torch.tensor([[0.6, 0.4, 0.5], [0.5, 0.6, 0.4]]))
    cube = keep_probabilities(torch.tensor([[[1.0, 5.0], [2.0, 0.0]]]), density=0.5, epsilon=0.1)
    torch.testing.assert_close(cube, torch.tensor([[[0.4, 0.6], [0.6, 0.4]]]))  # ranked along dim 1
    assert torch.equal(keep_probabilities(torch.ones(3, 1), 0.3, 0.1), torch.full((3, 1), 0.3))  # one entry per row


def test_masks_equal_mergekits_for_the_same_generator_state():
    sparsify = pytest.importorskip("mergekit.sparsify")
    g = torch.Generator().manual_seed(0)
    for shape in [(40, 70), (300,), (6, 5, 4)]:
        x = torch.randn(shape, generator=g)
        torch.manual_seed(7)
        theirs = sparsify.della_magprune(x, 0.4, 0.1, sparsify.RescaleNorm.l1)
        ours = apply_mask(x, magprune_mask(x, 0.4, 0.1, seed=7), "l1")
        assert torch.equal(ours, theirs), shape


def test_kept_share_follows_the_magnitude_rank():
    x = torch.randn(20, 5000, generator=torch.Generator().manual_seed(1))
    mask = magprune_mask(x, 0.5, 0.3, seed=3).bool()
    ranks = x.abs().argsort(dim=1).argsort(dim=1)
    low, high = mask[ranks < 500].float().mean(), mask[ranks >= 4500].float().mean()
    assert abs(mask.float().mean() - 0.5) < 0.01
    # mean rank/(n − 1) is 0.05 in the lowest tenth, 0.95 in the highest: p = 0.2 + 0.6 · that
    assert abs(low - 0.23) < 0.015 and abs(high - 0.77) < 0.015


def test_della_merge_is_ties_and_della_linear_a_sum_at_density_1(run_method, vec):
    tensors = {"w": [vec(1.0, -2.0, 0.5), vec(-3.0, 1.0, 0.5)]}
    mps = [{"weight": 1.0}, {"weight": 1.0}]
    della, _, _ = run_method("della", tensors, model_params=mps)
    linear, _, _ = run_method("della_linear", tensors, model_params=mps)
    assert torch.equal(della["w"], vec(-3.0, -2.0, 0.5))  # elected signs −, −, +; disjoint mean
    assert torch.equal(linear["w"], vec(-2.0, -1.0, 1.0))


def test_della_is_seeded_per_tensor_and_keeps_the_l1_norm(run_method):
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    mps = [{"weight": 1.0, "density": 0.4, "epsilon": 0.2}]
    first, report, _ = run_method("della_linear", {"a": [x], "b": [x]}, model_params=mps)
    again, _, _ = run_method("della_linear", {"b": [x], "a": [x]}, model_params=mps)
    other, _, _ = run_method("della_linear", {"a": [x], "b": [x]}, params={"seed": 5}, model_params=mps)
    assert torch.equal(first["a"], again["a"]) and not torch.equal(first["a"], first["b"])
    assert not torch.equal(first["a"], other["a"]) and report["seed"] == 0
    torch.testing.assert_close(first["a"].abs().sum(), x.abs().sum())
    expected = apply_mask(x, magprune_mask(x, 0.4, 0.2, tensor_seed(0, "a", 0)), "l1")
    assert torch.equal(first["a"], expected)


@pytest.mark.parametrize("density, epsilon", [(0.9, 0.15), (0.1, 0.1)])
def test_probabilities_outside_0_1_are_rejected(run_method, density, epsilon):
    with pytest.raises(ValueError, match="density ± epsilon must lie in"):
        run_method("della", {"w": [torch.ones(4)]}, model_params=[{"weight": 1, "density": density, "epsilon": epsilon}])
    run_method("della", {"w": [torch.ones(4)]}, model_params=[{"weight": 1, "density": 1.0, "epsilon": 0.15}])


def test_large_masks_are_drawn_per_chunk_from_derived_seeds():
    from mergeline.methods.della import DRAW_CHUNK, chunk_seed

    x = torch.randn(3, DRAW_CHUNK // 2 + 7, generator=torch.Generator().manual_seed(4))  # 2 chunks, the last short
    mask = magprune_mask(x, 0.5, 0.2, seed=11)
    assert torch.equal(mask, magprune_mask(x, 0.5, 0.2, seed=11))
    probs = keep_probabilities(x, 0.5, 0.2).reshape(-1)
    for k in range(2):
        part = probs[k * DRAW_CHUNK:(k + 1) * DRAW_CHUNK]
        expected = torch.bernoulli(part, generator=torch.Generator().manual_seed(chunk_seed(11, k)))
        assert torch.equal(mask.reshape(-1)[k * DRAW_CHUNK:(k + 1) * DRAW_CHUNK], expected), k
    assert chunk_seed(11, 0) == 11 and chunk_seed(11, 1) != chunk_seed(12, 1)
