"""MetaGPT: §10 vector, Σλ = 1, layer granularity, exclude_from_norm."""

import math

import pydantic
import pytest
import torch

from mergeline.methods import get_method


def test_metagpt_vector(run_method, vec):
    out, report, _ = run_method("metagpt", {"w": [vec(3, 0), vec(0, 4)]})
    assert torch.allclose(out["w"], vec(1.08, 2.56))
    assert report["lambdas"]["model"] == pytest.approx({"0": 0.36, "1": 0.64})


@pytest.mark.parametrize("granularity", ["model", "layer", "tensor"])
def test_metagpt_coefficients_sum_to_one(run_method, granularity):
    g = torch.Generator().manual_seed(0)
    names = ["model.embed_tokens.weight", "model.layers.0.q.weight", "model.layers.0.k.weight",
             "model.layers.1.q.weight", "lm_head.weight"]
    tensors = {n: [torch.randn(8, 4, generator=g) * s for s in (0.5, 1.0, 2.0)] for n in names}
    _, report, _ = run_method("metagpt", tensors, params={"granularity": granularity})
    units = report["lambdas"]
    expected_units = {"model": 1, "layer": 3, "tensor": 5}[granularity]
    assert len(units) == expected_units
    for lambdas in units.values():
        assert math.isclose(sum(lambdas.values()), 1.0, rel_tol=1e-12)
        assert lambdas["2"] > lambdas["1"] > lambdas["0"]
    if granularity == "layer":
        assert set(units) == {"none", "0", "1"}


def test_metagpt_layer_lambdas_follow_each_layer(run_method, vec):
    tensors = {"layers.0.w": [vec(1, 0), vec(0, 3)], "layers.1.w": [vec(2, 0), vec(0, 0)]}
    out, report, _ = run_method("metagpt", tensors, params={"granularity": "layer"})
    assert report["lambdas"]["0"] == pytest.approx({"0": 0.1, "1": 0.9})
    assert report["lambdas"]["1"] == pytest.approx({"0": 1.0, "1": 0.0})
    assert torch.allclose(out["layers.1.w"], vec(2, 0))


def test_metagpt_exclude_from_norm(run_method, vec):
    tensors = {"embed.weight": [vec(100, 0), vec(0, 0)], "layers.0.w": [vec(3, 0), vec(0, 4)]}
    out, report, _ = run_method("metagpt", tensors, params={"exclude_from_norm": [r"^embed\."]})
    assert report["lambdas"]["model"] == pytest.approx({"0": 0.36, "1": 0.64})
    assert torch.allclose(out["embed.weight"], vec(36, 0))  # still merged, with the model's λ


def test_metagpt_bad_regex_fails_at_config_time():
    with pytest.raises(pydantic.ValidationError, match="exclude_from_norm"):
        get_method("metagpt").Parameters.model_validate({"exclude_from_norm": ["("]})


def test_metagpt_refine_ties_trims_then_elects_signs(run_method, vec):
    # density 0.5 keeps the 2 largest |τ| of 4: τ1 → [4, 0, -2, 0] (‖·‖² = 20), τ2 → [-1, 0, 0, 3]
    # (‖·‖² = 10): λ = [2/3, 1/3]; votes [8/3 − 1/3, 0, −4/3, 1] elect [+, +, −, +] so τ2's −1 drops.
    tensors = {"w": [vec(4, 1, -2, 0.5), vec(-1, 0.5, 0.2, 3)]}
    out, report, _ = run_method("metagpt", tensors, params={"refine": "ties"},
                                model_params=[{"density": 0.5}, {"density": 0.5}])
    assert report["lambdas"]["model"] == pytest.approx({"0": 2 / 3, "1": 1 / 3})
    assert torch.allclose(out["w"], vec(8 / 3, 0, -4 / 3, 1))


def test_metagpt_refine_dare_norms_use_the_dropped_rescaled_vectors(run_method):
    g = torch.Generator().manual_seed(0)
    tensors = {"w": [torch.randn(4000, generator=g), 2 * torch.randn(4000, generator=g)]}
    mp = [{"density": 0.25}, {"density": 0.25}]
    out, report, _ = run_method("metagpt", tensors, params={"refine": "dare", "seed": 3}, model_params=mp)
    again, _, _ = run_method("metagpt", tensors, params={"refine": "dare", "seed": 3}, model_params=mp)
    assert torch.equal(out["w"], again["w"])  # seeded per tensor and model
    kept = (out["w"] != 0).float().mean().item()
    assert 0.4 < kept < 0.47  # 1 − 0.75² ≈ 0.44 of the entries survive in either vector
    sq = report["squared_norms"]["model"]
    plain = {m: float(t.double().square().sum()) for m, t in zip("01", tensors["w"])}
    assert sq["0"] == pytest.approx(plain["0"] / 0.25, rel=0.15)  # dropped, rescaled by 1/ρ: E‖τ̃‖² = ‖τ‖²/ρ
    assert sq["0"] != pytest.approx(plain["0"], rel=0.5)


def test_metagpt_refine_none_ignores_density_one(run_method, vec):
    out, _, _ = run_method("metagpt", {"w": [vec(3, 0), vec(0, 4)]}, params={"refine": "ties"})
    assert torch.allclose(out["w"], vec(1.08, 2.56))
