"""DARE (statistics, reproducibility, rescale modes) and Model Breadcrumbs (masks, small tensors)."""

import pytest
import torch

from mergeline.methods._sparsify import outlier_mask


def _dare(run_method, tensors, method="dare_linear", **params):
    density = params.pop("density", 0.1)
    n = len(next(iter(tensors.values())))
    return run_method(method, tensors, params=params, model_params=[{"weight": 1, "density": density}] * n)


def test_dare_statistics_inverse_density(run_method):
    x = 1.0 + 0.1 * torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    out, report, _ = _dare(run_method, {"w": [x]}, rescale_mode="inverse_density")
    kept = out["w"] != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.001
    assert abs(out["w"].mean().item() - x.mean().item()) < 0.01 * x.mean().item()
    assert torch.allclose(out["w"][kept], x[kept] / 0.1)
    assert report["seed"] == 0 and report["rescale_mode"] == "inverse_density"


def test_dare_l1_rescale_matches_norm(run_method):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    out, _, _ = _dare(run_method, {"w": [x]}, density=0.3)
    assert torch.isclose(out["w"].abs().sum(), x.abs().sum(), rtol=1e-5)
    no_rescale, _, _ = _dare(run_method, {"w": [x]}, density=0.3, rescale=False)
    kept = no_rescale["w"] != 0
    assert torch.equal(no_rescale["w"][kept], x[kept])


def test_dare_is_reproducible_and_seeded_per_tensor_and_model(run_method):
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    tensors = {"a": [x, x], "b": [x, x]}
    first, _, m1 = _dare(run_method, tensors, method="dare_linear", density=0.5, normalize=False)
    again, _, _ = _dare(run_method, dict(reversed(tensors.items())), density=0.5, normalize=False)
    other_seed, _, _ = _dare(run_method, tensors, density=0.5, seed=1)
    assert all(torch.equal(first[n], again[n]) for n in tensors)  # bit for bit, any tensor order
    assert not torch.equal(first["a"], first["b"])  # different tensor name -> different mask
    assert not torch.equal(first["a"], other_seed["a"])
    masks = [m1.sparsify(x, i, _inputs(m1, "a", x)) != 0 for i in (0, 1)]
    assert not torch.equal(masks[0], masks[1])  # different model -> different mask


def _inputs(method, name, x):
    from mergeline.methods.base import TensorInputs

    mps = [method.PerModel(weight=1, density=0.5)] * 2
    return TensorInputs(name, None, [x, x], [0, 1], method.params, mps)


def test_dare_ties_elects_signs(run_method, vec):
    # density 1 keeps everything: dare_ties then is TIES without trim, disjoint sum by default.
    out, _, _ = _dare(
        run_method, {"w": [vec(1.0, -2.0, 0.5), vec(-3.0, 1.0, 0.5)]}, method="dare_ties", density=1.0
    )
    assert torch.equal(out["w"], vec(-3, -2, 1.0))


def test_breadcrumbs_mask_drops_outliers_and_small():
    x = torch.arange(1.0, 101.0)  # magnitudes 1..100
    mask = outlier_mask(x, density=0.5, gamma=0.1)
    assert mask.sum() == 50
    assert x[mask].max() == 90 and x[mask].min() == 41


def test_breadcrumbs_small_tensor_not_zeroed(run_method, vec):
    out, _, _ = run_method(
        "breadcrumbs", {"b": [vec(0.1, -5.0, 2.0, 0.3)]}, model_params=[{"weight": 1, "density": 0.5}]
    )
    # int(0.01 * 4) = 0 outliers dropped: keep the top 2 magnitudes.
    assert torch.equal(out["b"], vec(0, -5.0, 2.0, 0))


def test_breadcrumbs_matches_mergekit_on_distinct_magnitudes():
    from mergekit.sparsify import magnitude_outliers

    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(4))
    for density, gamma in [(0.3, 0.01), (0.9, 0.2), (0.5, 0.0)]:
        expected = magnitude_outliers(x, density=density, gamma=gamma)
        assert torch.equal(x * outlier_mask(x, density, gamma), expected)


def test_breadcrumbs_ties_uses_consensus(run_method, vec):
    tensors = {"w": [vec(1.0, -2.0, 0.5), vec(-3.0, 1.0, 0.5)]}
    mps = [{"weight": 1, "density": 1.0}] * 2
    ties_out, _, _ = run_method("breadcrumbs_ties", tensors, model_params=mps)
    plain, _, _ = run_method("breadcrumbs", tensors, model_params=mps)
    assert torch.equal(ties_out["w"], vec(-3, -2, 1.0))
    assert torch.equal(plain["w"], vec(-2, -1, 1.0))


@pytest.mark.parametrize("bad", [{"weight": 1, "gamma": 1.0}, {"weight": 1, "gamma": -0.1}])
def test_breadcrumbs_gamma_validated(bad):
    import pydantic

    from mergeline.methods import get_method

    with pytest.raises(pydantic.ValidationError):
        get_method("breadcrumbs").PerModel.model_validate(bad)
