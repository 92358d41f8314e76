"""Iso-CTS against hand-computed values: common subspace of the sum plus each task's residual directions."""

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods.iso_cts import subspace_sizes


def test_subspace_sizes_follow_the_authors_rounding():
    assert subspace_sizes(4, 2, 0.5) == (2, 1)
    assert subspace_sizes(10, 3, 0.8) == (7, 1)  # c = 8, round(2/3)·3 = 3 → c = 7
    assert subspace_sizes(5, 2, 0.8) == (5, 0)   # c = 4, round(0.5) = 0 (half to even) → all common
    assert subspace_sizes(4096, 8, 0.8) == (3280, 102)


def test_iso_cts_uses_each_tasks_residual_spectrum(run_method, vec):
    # r = 4, T = 2, f = 0.5 → c = 2, p = 1.  M = diag(4, 3, 1, 0.75): common e1 (4), e2 (3).
    # τ1 minus common = diag(0, 0, 1, 0.5) → top e3 (1);  τ2 minus common = diag(0, 0, 0, 0.25) → e4 (0.25).
    # σ = (1, 0.25, 4, 3) → mean 2.0625, and U, V are a permutation: Δ = 2.0625 · I.
    # (Iso-C on the same vectors: mean of (4, 3, 1, 0.75) = 2.1875.)
    tau1 = torch.diag(torch.tensor([4.0, 0.0, 1.0, 0.5]))
    tau2 = torch.diag(torch.tensor([0.0, 3.0, 0.0, 0.25]))
    out, _, _ = run_method("iso_cts", {"w": [tau1, tau2], "b": [vec(1), vec(3)]},
                           params={"common_space_fraction": 0.5, "lambda": 2.0})
    torch.testing.assert_close(out["w"], 2 * 2.0625 * torch.eye(4), rtol=0, atol=1e-6)
    assert torch.equal(out["b"], vec(4))
    iso_c, _, _ = run_method("iso_c", {"w": [tau1, tau2]})
    torch.testing.assert_close(iso_c["w"], 2.1875 * torch.eye(4), rtol=0, atol=1e-6)


def test_iso_cts_with_everything_common_equals_iso_c(run_method):
    g = torch.Generator().manual_seed(1)
    taus = [torch.randn(6, 5, generator=g) for _ in range(3)]
    cts, _, _ = run_method("iso_cts", {"w": taus}, params={"common_space_fraction": 1.0})
    iso, _, _ = run_method("iso_c", {"w": taus})
    torch.testing.assert_close(cts["w"], iso["w"], rtol=0, atol=1e-5)


def test_iso_cts_refuses_a_fraction_that_leaves_no_common_space(run_method):
    taus = [torch.randn(3, 3), torch.randn(3, 3)]
    with pytest.raises(MergelineError, match="tensor 'w': common_space_fraction 0.0 leaves no common subspace"):
        run_method("iso_cts", {"w": taus}, params={"common_space_fraction": 0.0})
