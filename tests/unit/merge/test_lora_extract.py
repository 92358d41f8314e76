"""LoRA extraction's math: truncated SVD factors, their error, the adapter config (hand-checked)."""

from __future__ import annotations

import math

import pytest
import torch

from mergeline.merge.lora_extract import (adapter_config, extract_lora, fold_factors, is_linear_weight,
                                    low_rank_factors)


def test_rank_one_matrix_is_recovered_exactly() -> None:
    u, v = torch.tensor([[1.0], [2.0], [0.0]]), torch.tensor([[3.0, -1.0]])
    delta = u @ v  # rank 1, singular value ‖u‖‖v‖ = √5·√10
    b, a, error = low_rank_factors(delta, rank=1)
    assert b.shape == (3, 1) and a.shape == (1, 2)
    assert torch.allclose(b @ a, delta.double(), atol=1e-12)
    assert error == pytest.approx(0.0, abs=1e-12)
    # the split is balanced: ‖B‖ = ‖A‖ = √σ
    assert float(b.norm()) == pytest.approx(math.sqrt(math.sqrt(50.0)), rel=1e-9)
    assert float(a.norm()) == pytest.approx(math.sqrt(math.sqrt(50.0)), rel=1e-9)


def test_error_is_the_discarded_singular_values() -> None:
    delta = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    b, a, error = low_rank_factors(delta, rank=2)
    assert torch.allclose(b @ a, torch.diag(torch.tensor([3.0, 2.0, 0.0])).double(), atol=1e-12)
    assert error == pytest.approx(1.0 / math.sqrt(14.0), rel=1e-12)  # √(1²) / √(3²+2²+1²)


def test_rank_is_clipped_to_the_small_side_and_zero_delta_has_zero_error() -> None:
    b, a, error = low_rank_factors(torch.zeros(2, 5), rank=8)
    assert b.shape == (2, 2) and a.shape == (2, 5) and error == 0.0
    with pytest.raises(ValueError):
        low_rank_factors(torch.zeros(2, 2), rank=0)


def test_targets_are_linear_weights_only() -> None:
    assert is_linear_weight("model.layers.0.self_attn.q_proj.weight", (4, 4))
    assert not is_linear_weight("model.embed_tokens.weight", (10, 4))
    assert not is_linear_weight("lm_head.weight", (10, 4))
    assert not is_linear_weight("model.norm.weight", (4,))
    assert not is_linear_weight("model.layers.0.mlp.up_proj.bias", (4, 4))


def test_extract_names_factors_as_peft_and_reports_dropped_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    base = {"m.layers.0.q_proj.weight": torch.randn(6, 4, generator=gen), "m.norm.weight": torch.ones(4),
            "m.embed_tokens.weight": torch.zeros(8, 4)}
    low = torch.randn(6, 1, generator=gen) @ torch.randn(1, 4, generator=gen)
    model = {"m.layers.0.q_proj.weight": base["m.layers.0.q_proj.weight"] + low,
             "m.norm.weight": torch.tensor([1.0, 1.0, 1.0, 3.0]), "m.embed_tokens.weight": torch.zeros(8, 4)}
    factors, report = extract_lora(model, lambda n: (model[n], base[n]), rank=3)
    assert set(factors) == {"base_model.model.m.layers.0.q_proj.lora_A.weight",
                            "base_model.model.m.layers.0.q_proj.lora_B.weight"}
    assert factors["base_model.model.m.layers.0.q_proj.lora_A.weight"].dtype == torch.float32
    assert torch.allclose(fold_factors(factors)["m.layers.0.q_proj.weight"], low, atol=1e-5)
    assert report.relative_error < 1e-6 and report.ranks == {"m.layers.0.q_proj": 3}
    assert report.dropped == {"m.norm.weight": pytest.approx(2.0)}  # the unchanged embedding is not listed
    config = adapter_config(report, base_model="base")
    assert config["r"] == config["lora_alpha"] == 3 and config["rank_pattern"] == {}
    assert config["target_modules"] == ["m.layers.0.q_proj"]


def test_modules_below_the_rank_get_a_rank_pattern_with_scale_one() -> None:
    model = {"a.weight": torch.eye(2), "b.weight": torch.eye(8)}
    base = {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(8, 8)}
    _, report = extract_lora(model, lambda n: (model[n], base[n]), rank=4)
    config = adapter_config(report, base_model="x")
    assert config["rank_pattern"] == {"a": 2} and config["alpha_pattern"] == {"a": 2}
    assert report.relative_error == pytest.approx(math.sqrt(4 / 10))  # 4 of b's 8 unit σ² are dropped
