"""The spectral methods' SVD (mergeline/methods/_spectral.py: thin_svd): float64 only where float32 fails."""

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods import _spectral
from mergeline.methods.iso_cts import iso_cts_merge

REAL_SVD = torch.linalg.svd


def svd_failing_in(*dtypes: torch.dtype):
    """torch.linalg.svd that raises LAPACK's convergence error for inputs of ``dtypes``, as gesdd does on
    some real float32 matrices (which ones depends on the LAPACK build, so the failure is injected)."""
    calls: list[torch.dtype] = []

    def svd(x: torch.Tensor, full_matrices: bool = True):
        calls.append(x.dtype)
        if x.dtype in dtypes:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (error code: 1).")
        return REAL_SVD(x, full_matrices=full_matrices)

    return svd, calls


def test_a_float32_svd_that_does_not_converge_is_taken_in_float64_and_cast_back(monkeypatch):
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0], [0.0, 2.0]])
    svd, calls = svd_failing_in(torch.float32)
    monkeypatch.setattr(torch.linalg, "svd", svd)
    u, s, vt = _spectral.thin_svd(x, "w")
    assert calls == [torch.float32, torch.float64]
    assert (u.dtype, s.dtype, vt.dtype) == (torch.float32,) * 3 and u.shape == (3, 2) and vt.shape == (2, 2)
    expected = [t.float() for t in REAL_SVD(x.double(), full_matrices=False)]
    assert all(torch.equal(a, b) for a, b in zip((u, s, vt), expected))
    torch.testing.assert_close(u @ torch.diag(s) @ vt, x, rtol=0, atol=1e-6)


def test_a_converging_svd_is_the_plain_float32_one(monkeypatch):
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    svd, calls = svd_failing_in()
    monkeypatch.setattr(torch.linalg, "svd", svd)
    assert all(torch.equal(a, b) for a, b in zip(_spectral.thin_svd(x), REAL_SVD(x, full_matrices=False)))
    assert calls == [torch.float32]


def test_iso_cts_merges_where_float32_fails_and_names_the_tensor_where_float64_fails_too(monkeypatch):
    taus = [torch.diag(torch.tensor([4.0, 0.0, 1.0, 0.5])), torch.diag(torch.tensor([0.0, 3.0, 0.0, 0.25]))]
    plain = iso_cts_merge(taus, 0.5, "w")
    svd, _ = svd_failing_in(torch.float32)
    monkeypatch.setattr(torch.linalg, "svd", svd)
    torch.testing.assert_close(iso_cts_merge(taus, 0.5, "w"), plain, rtol=0, atol=1e-6)  # 2.0625 · I
    svd, _ = svd_failing_in(torch.float32, torch.float64)
    monkeypatch.setattr(torch.linalg, "svd", svd)
    with pytest.raises(MergelineError, match=r"tensor 'model.layers.0.mlp.up_proj.weight': its SVD did not converge"):
        iso_cts_merge(taus, 0.5, "model.layers.0.mlp.up_proj.weight")
