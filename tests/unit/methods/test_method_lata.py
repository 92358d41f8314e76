"""LATA: §10 weight vectors, similarities through the contract, apply_to / non_layer options."""

import math

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods.lata import layer_weights

S = {0: 0.99, 1: 0.97, 2: 0.90, 3: 0.80}


def test_lata_threshold_vector():
    assert layer_weights(S, "threshold", 0.95, False) == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0}


def test_lata_linear_rank_vector():
    w = layer_weights(S, "linear_rank", 0.95, False)
    assert [w[l] for l in range(4)] == pytest.approx([0, 1 / 3, 2 / 3, 1])


def test_lata_log_rank_and_rescale():
    w = layer_weights(S, "log_rank", 0.95, False)
    assert [w[l] for l in range(4)] == pytest.approx([0, 1 - math.log(3) / math.log(4), 0.5, 1])
    rescaled = layer_weights(S, "threshold", 0.95, True)
    assert rescaled == {0: 0.0, 1: 0.0, 2: 2.0, 3: 2.0}  # Σ w = L = 4


def _layered(similarities):
    """ι_l = [1, 0] and c_l = [s, √(1−s²)], so cos(c_l, ι_l) = s; θ_base = 0, θ_inst = ι."""
    inst, tau, pretrained = {}, {}, {}
    for l, s in similarities.items():
        name = f"model.layers.{l}.mlp.weight"
        inst[name] = torch.tensor([1.0, 0.0])
        tau[name] = torch.tensor([s, math.sqrt(1 - s * s)]) - inst[name]
        pretrained[name] = torch.zeros(2)
    name = "model.embed_tokens.weight"
    inst[name], tau[name], pretrained[name] = torch.ones(2), torch.tensor([5.0, 5.0]), torch.zeros(2)
    return inst, tau, pretrained


@pytest.mark.parametrize("scheme, expected", [("threshold", [0, 0, 1, 1]), ("linear_rank", [0, 1 / 3, 2 / 3, 1])])
def test_lata_weights_through_contract(run_method, scheme, expected):
    inst, tau, pretrained = _layered(S)
    out, report, _ = run_method(
        "lata", {n: [v] for n, v in tau.items()}, base=inst, params={"scheme": scheme},
        global_inputs={"pretrained_model": pretrained},
    )
    assert [report["similarity"]["0"][str(l)] for l in range(4)] == pytest.approx(list(S.values()))
    assert [report["layer_weights"]["0"][str(l)] for l in range(4)] == pytest.approx(expected)
    for l, w in enumerate(expected):
        name = f"model.layers.{l}.mlp.weight"
        assert torch.allclose(out[name], w * tau[name])
    assert torch.equal(out["model.embed_tokens.weight"], torch.zeros(2))  # non_layer: keep


def test_lata_options_apply_to_non_layer_weight_lambda(run_method):
    inst, tau, pretrained = _layered(S)
    out, _, _ = run_method(
        "lata", {n: [v] for n, v in tau.items()}, base=inst,
        params={"apply_to": "complex_vector", "non_layer": "add", "lambda": 0.5},
        model_params=[{"weight": -1.0}], global_inputs={"pretrained_model": pretrained},
    )
    name = "model.layers.3.mlp.weight"
    assert torch.allclose(out[name], -0.5 * (tau[name] + inst[name]))  # c = τ + ι
    assert torch.allclose(out["model.embed_tokens.weight"], -0.5 * (torch.tensor([5.0, 5.0]) + 1))
    assert torch.equal(out["model.layers.0.mlp.weight"], torch.zeros(2))


def test_lata_similarity_unit_layer_vs_tensor(run_method):
    # One block, two tensors: per-tensor cosines 1 and 0 (mean 0.5); over the concatenation 1/101.
    inst = {"layers.0.a": torch.tensor([1.0, 0.0]), "layers.0.b": torch.tensor([10.0, 0.0])}
    c = {"layers.0.a": torch.tensor([1.0, 0.0]), "layers.0.b": torch.tensor([0.0, 10.0])}
    tau = {n: [c[n] - inst[n]] for n in inst}
    pre = {"pretrained_model": {n: torch.zeros(2) for n in inst}}
    _, by_layer, _ = run_method("lata", tau, base=inst, global_inputs=pre)
    _, by_tensor, _ = run_method("lata", tau, base=inst, params={"similarity_unit": "tensor"}, global_inputs=pre)
    assert by_layer["similarity"]["0"]["0"] == pytest.approx(1 / 101)  # (1·1) / (√101 · √101)
    assert by_tensor["similarity"]["0"]["0"] == pytest.approx(0.5)


def test_lata_needs_pretrained_tensor(run_method):
    with pytest.raises(MergelineError, match="pretrained_model"):
        run_method("lata", {"layers.0.w": [torch.ones(2)]}, base={"layers.0.w": torch.ones(2)})


def test_lata_median_delta_keeps_the_less_similar_half_where_a_fixed_delta_keeps_all(run_method):
    low = {0: 0.30, 1: 0.10, 2: 0.50, 3: 0.20}  # every cosine < 0.95: the default threshold keeps all
    assert layer_weights(low, "threshold", 0.95, False) == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert layer_weights(low, "threshold", "median", False) == {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}
    assert layer_weights(low, "threshold", "median", True) == {0: 0.0, 1: 2.0, 2: 0.0, 3: 2.0}  # amplified
    inst, tau, pretrained = _layered(low)
    _, report, _ = run_method("lata", {n: [v] for n, v in tau.items()}, base=inst, params={"delta": "median"},
                              global_inputs={"pretrained_model": pretrained})
    assert report["delta_used"]["0"] == pytest.approx(0.25)
    assert report["all_weights_one"] is False
    _, fixed, _ = run_method("lata", {n: [v] for n, v in tau.items()}, base=inst,
                             global_inputs={"pretrained_model": pretrained})
    assert fixed["all_weights_one"] is True


def test_lata_delta_rejects_other_strings():
    from mergeline.methods import get_method

    with pytest.raises(Exception, match="delta"):
        get_method("lata").Parameters.model_validate({"delta": "mean"})
