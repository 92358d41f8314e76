"""Consensus TIES against hand-computed values: whole-model trim, majority sign, disjoint sum, TALL masks."""

import pytest
import torch


def _model(vec):
    # τ1: a = (4, −1, .5), b = (2, .1);  τ2: a = (−3, 1, .2), b = (−.5, .05);  n = 5 entries per model
    return {"a": [vec(4, -1, 0.5), vec(-3, 1, 0.2)], "b": [vec(2, 0.1), vec(-0.5, 0.05)]}


def test_trim_over_the_whole_model_then_disjoint_sum(run_method, vec):
    # density 0.2: int(0.2·5) + 1 = 2 entries per model (the authors' kthvalue rule), over both tensors:
    #   τ̂1 keeps 4 (a) and 2 (b); τ̂2 keeps −3 and 1 (a).  Σ τ̂ = a (1, 1, 0), b (2, 0): signs +, +, 0 | +, 0
    #   majority sign over the model: + → zero votes become +.  Disjoint sum: a (4, 1, 0), b (2, 0).
    # consensus_k 1 with λ_t = 0.6: every entry has a mask (see below), so Δ is the TIES vector.
    out, report, _ = run_method("consensus_ties", _model(vec), params={"consensus_k": 1})
    assert torch.equal(out["a"], vec(4, 1, 0)) and torch.equal(out["b"], vec(2, 0))
    assert report["trim_threshold"] == {"0": 2.0, "1": 1.0} and report["majority_sign"] == 1.0


def test_tall_masks_use_the_ties_vector_and_per_model_lambda(run_method, vec):
    # τ_MTL = a (4, 1, 0), b (2, 0).  λ = (0.6, 0.6): m1 a (1, 0, 1) b (1, 1); m2 a (0, 1, 1) b (0, 1)
    #   votes a (1, 1, 2), b (1, 2): k = 2 keeps only entries where τ_MTL is 0 → Δ = 0.
    out, _, _ = run_method("consensus_ties", _model(vec))
    assert torch.equal(out["a"], vec(0, 0, 0)) and torch.equal(out["b"], vec(0, 0))
    # λ2 = 0.4: m2 a0 = 3 > 0.4·7 → 1, so a0 gets two votes: Δ a = (4, 0, 0), scaled by λ = 0.5
    out, report, _ = run_method("consensus_ties", _model(vec), params={"lambda": 0.5},
                                model_params=[{"tall_mask_lambda": 0.6}, {"tall_mask_lambda": 0.4}])
    assert torch.equal(out["a"], vec(2, 0, 0)) and torch.equal(out["b"], vec(0, 0))
    assert report["consensus_fraction"] == pytest.approx(3 / 5)


def test_zero_votes_take_the_model_wide_majority_sign(run_method, vec):
    # density 1 keeps everything.  a: Σ = (0, 1.5, −2.5) → signs (0, +, −), model-wide 0 + 1 − 1 = 0:
    #   the zero vote stays 0 and the authors' where() then sums the negative entries: a0 = −2.
    out, report, _ = run_method("consensus_ties", {"a": [vec(2, 1, 0.5), vec(-2, 0.5, -3)]},
                                params={"consensus_k": 0}, model_params=[{"density": 1.0}] * 2)
    assert torch.equal(out["a"], vec(-2, 1.5, -3)) and report["majority_sign"] == 0.0
    # with a tensor of positive votes elsewhere the majority is +: a0 = +2
    out, report, _ = run_method("consensus_ties", {"a": [vec(2, 1, 0.5), vec(-2, 0.5, -3)], "b": [vec(1, 1), vec(1, 1)]},
                                params={"consensus_k": 0}, model_params=[{"density": 1.0}] * 2)
    assert torch.equal(out["a"], vec(2, 1.5, -3)) and report["majority_sign"] == 1.0


def test_ties_at_the_threshold_are_all_kept(run_method, vec):
    # n = 4, density 0.25: int(1) + 1 = 2 → threshold = 2nd largest |τ| = 1, and all three 1s are ≥ it
    out, report, _ = run_method("consensus_ties", {"a": [vec(3, 1, -1, 1)]},
                                params={"consensus_k": 0}, model_params=[{"density": 0.25}])
    assert report["consensus_fraction"] == 1.0
    assert torch.equal(out["a"], vec(3, 1, -1, 1))  # 3 entries kept where the authors' rule asks for 2
    assert report["trim_threshold"] == {"0": 1.0}
