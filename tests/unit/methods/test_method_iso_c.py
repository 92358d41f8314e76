"""Iso-C against hand-computed values: the summed matrix with a flat spectrum, the mean elsewhere."""

import torch

from mergeline.methods import get_method, pipeline_methods


def test_iso_c_flattens_the_spectrum_of_the_sum(run_method, vec):
    # METHODS.md §10: M = diag(3, 1) from two tasks → mean singular value 2 → diag(2, 2)
    tau1 = torch.diag(torch.tensor([3.0, 0.0]))
    tau2 = torch.diag(torch.tensor([0.0, 1.0]))
    out, report, _ = run_method("iso_c", {"w": [tau1, tau2], "b": [vec(1, 2), vec(3, 4)]}, params={"lambda": 1.5})
    torch.testing.assert_close(out["w"], torch.diag(torch.tensor([3.0, 3.0])), rtol=0, atol=1e-6)
    assert torch.equal(out["b"], vec(3, 4.5))  # 1.5 · mean
    assert report["matrices"] == 1 and report["averaged_tensors"] == 1 and report["lambda"] == 1.5


def test_iso_c_keeps_the_directions_of_the_sum(run_method):
    # a rank-1 sum: one direction u vᵀ carries singular value 4, the other 0 → mean 2 → Δ = 2 u vᵀ (+ 2 u2 v2ᵀ)
    u = torch.tensor([0.6, 0.8])
    v = torch.tensor([0.0, 1.0])
    tau = torch.outer(u, v) * 2
    out, _, _ = run_method("iso_c", {"w": [tau, tau]})
    u2, v2 = torch.tensor([-0.8, 0.6]), torch.tensor([1.0, 0.0])
    expected = 2 * torch.outer(u, v) + 2 * torch.outer(u2, v2)
    # the second pair's sign is the SVD's choice: compare up to it
    got = out["w"]
    assert torch.allclose(got, expected, atol=1e-6) or torch.allclose(got, 4 * torch.outer(u, v) - expected, atol=1e-6)


def test_iso_c_takes_no_per_model_parameters_and_is_swept_over_lambda():
    cls = get_method("iso_c")
    assert not cls.PerModel.model_fields
    assert pipeline_methods()["iso_c"][1].sweeps == ("lambda",)
