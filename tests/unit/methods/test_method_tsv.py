"""TSV-M against hand-computed values: concatenated top singular triplets, orthogonalised, mean elsewhere."""

import math

import torch

from mergeline.methods.tsv import tsv_merge

S = 1 / math.sqrt(2)


def test_tsv_orthogonalises_the_concatenated_singular_vectors(run_method):
    # τ1 = diag(3, 1): top triplet (e1, 3, e1).  τ2 = 2·u2 e2ᵀ with u2 = (e1 + e2)/√2: top (u2, 2, e2).
    # r = 2, T = 2 → k = 1: U = [e1 u2] = [[1, s], [0, s]], σ = (3, 2), Vᵀ = I.
    # The rotation nearest to [[a, b], [c, d]] (det > 0) is [[a+d, b−c], [c−b, a+d]] / norm.
    tau1 = torch.diag(torch.tensor([3.0, 1.0]))
    tau2 = 2 * torch.tensor([[0.0, S], [0.0, S]])
    norm = math.hypot(1 + S, S)
    rotation = torch.tensor([[1 + S, S], [-S, 1 + S]]) / norm
    out, report, _ = run_method("tsv", {"w": [tau1, tau2]}, params={"lambda": 0.5})
    expected = 0.5 * rotation @ torch.diag(torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(out["w"], expected, rtol=0, atol=1e-6)
    assert report["matrices"] == 1 and report["averaged_tensors"] == 0


def test_tsv_orthogonal_tasks_add_up_exactly(run_method):
    # orthogonal singular vectors: the concatenation is already orthogonal, Δ = τ1's top + τ2's top
    tau1 = torch.diag(torch.tensor([3.0, 0.0, 0.0, 1.0]))
    tau2 = torch.diag(torch.tensor([0.0, 2.0, 0.5, 0.0]))
    out, _, _ = run_method("tsv", {"w": [tau1, tau2]})  # r = 4, k = 2: τ1 keeps 3 and 1, τ2 keeps 2 and 0.5
    torch.testing.assert_close(out["w"], tau1 + tau2, rtol=0, atol=1e-6)
    # three tasks: k = int(4 · 1/3) = 1, only each task's largest triplet survives; the unchanged third
    # task's triplet (σ = 0, arbitrary vectors) does not disturb the others
    tau3 = torch.zeros(4, 4)
    out, _, _ = run_method("tsv", {"w": [tau1, tau2, tau3]})
    torch.testing.assert_close(out["w"], torch.diag(torch.tensor([3.0, 2.0, 0.0, 0.0])), rtol=0, atol=1e-6)


def test_tsv_weights_scale_before_the_svd_and_vectors_are_averaged(run_method, vec):
    tau1 = torch.diag(torch.tensor([3.0, 0.0]))
    tau2 = torch.diag(torch.tensor([0.0, 2.0]))
    out, report, _ = run_method(
        "tsv", {"w": [tau1, tau2], "norm.weight": [vec(1, 2), vec(3, 6)], "text_projection": [tau1, tau2]},
        model_params=[{"weight": 2.0}, {"weight": -1.0}])
    torch.testing.assert_close(out["w"], torch.diag(torch.tensor([6.0, -2.0])), rtol=0, atol=1e-6)
    assert torch.equal(out["norm.weight"], vec(-0.5, -1))  # mean of 2·(1, 2) and −(3, 6)
    assert torch.equal(out["text_projection"], torch.diag(torch.tensor([3.0, -1.0])))  # averaged, as the authors
    assert report["matrices"] == 1 and report["averaged_tensors"] == 2 and report["weights"] == [2.0, -1.0]


def test_tsv_rank_below_task_count_gives_zero_as_the_authors():
    taus = [torch.ones(1, 3), 2 * torch.ones(1, 3)]  # r = 1, T = 2 → k = 0
    assert torch.equal(tsv_merge(taus), torch.zeros(1, 3))


def test_tsv_result_is_close_to_task_arithmetic_for_low_rank_orthogonal_tasks(run_method):
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    tau1 = q[:, :4] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])) @ q[:, 4:8].T
    tau2 = q[:, 8:12] @ torch.diag(torch.tensor([5.0, 1.0, 0.5, 0.2])) @ q[:, 12:16].T
    out, _, _ = run_method("tsv", {"w": [tau1, tau2]})  # rank 4 each, k = 8: nothing is cut
    torch.testing.assert_close(out["w"], tau1 + tau2, rtol=0, atol=1e-5)
