"""Consensus TA against hand-computed TALL masks (strict >, as the authors) and the k-of-T consensus."""

import pytest
import torch

from mergeline.methods import pipeline_methods


def _three(vec):
    return {"w": [vec(1, 0.5, -2, 0), vec(1, -1, 0.1, 3), vec(0, -1, 0.1, 0)]}


def test_consensus_ta_hand_computed(run_method, vec):
    # Σ = (2, −1.5, −1.8, 3).  λ_t = 0.6:
    #   m1: |τ1| = (1, .5, 2, 0)  vs 0.6·|Σ−τ1| = (.6, 1.2, .12, 1.8)  → (1, 0, 1, 0)
    #   m2: |τ2| = (1, 1, .1, 3)  vs 0.6·|Σ−τ2| = (.6, .3, 1.14, 0)    → (1, 1, 0, 1)
    #   m3: |τ3| = (0, 1, .1, 0)  vs 0.6·|Σ−τ3| = (1.2, .3, 1.14, 1.8) → (0, 1, 0, 0)
    # votes (2, 2, 1, 1): k = 2 keeps the first two entries of Σ.
    out, report, _ = run_method("consensus_ta", _three(vec), params={"lambda": 0.5})
    assert torch.equal(out["w"], vec(1, -0.75, 0, 0))
    assert report["consensus_fraction"] == 0.5
    assert report["tall_mask_fraction"] == {"0": 0.5, "1": 0.75, "2": 0.25}
    out, _, _ = run_method("consensus_ta", _three(vec), params={"consensus_k": 1})
    assert torch.equal(out["w"], vec(2, -1.5, -1.8, 3))
    out, _, _ = run_method("consensus_ta", _three(vec), params={"consensus_k": 3})
    assert torch.equal(out["w"], vec(0, 0, 0, 0))


def test_consensus_ta_per_model_tall_mask_lambda(run_method, vec):
    # λ3 = 0.05 for the third model: m3 = |τ3| > 0.05·|Σ−τ3| = (.1, .025, .057, .09) → (0, 1, 1, 0);
    # votes (2, 2, 2, 1) → the third entry joins.
    out, report, _ = run_method("consensus_ta", _three(vec),
                                model_params=[{}, {}, {"tall_mask_lambda": 0.05}])
    assert torch.equal(out["w"], vec(2, -1.5, -1.8, 0))
    assert report["tall_mask_lambda"] == [0.6, 0.6, 0.05]


def test_consensus_ta_strict_comparison_at_equality(run_method, vec):
    # |τ_t| = λ·|Σ − τ_t| exactly (two equal vectors, λ = 1): the authors' ">" leaves the mask off
    out, _, _ = run_method("consensus_ta", {"w": [vec(2), vec(2)]},
                           params={"consensus_k": 1}, model_params=[{"tall_mask_lambda": 1.0}] * 2)
    assert torch.equal(out["w"], vec(0))


def test_consensus_ta_sweeps_lambda_and_tall_mask_lambda():
    cls, entry = pipeline_methods()["consensus_ta"]
    assert entry.sweeps == ("lambda", "tall_mask_lambda") and cls.row_separable
    with pytest.raises(Exception, match="greater than or equal to 0"):
        cls.PerModel.model_validate({"tall_mask_lambda": -0.1})
