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
