"""LoRA folding (mergeline.merge.lora): ΔW = s·B·A by hand, equality with PEFT's merge_and_unload, dtype, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.merge.lora import LoraAdapter, extract_lora_vector, fold
from mergeline.merge.lora_patterns import PatternTable
from tests.lora_fixtures import build_lora_adapter, peft_merged_state, write_adapter
from tests.merge_fixtures import load_tensors, tiny_base


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_base("llama", tmp_path_factory.mktemp("lora") / "llama")


def test_fold_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])   # (r=2, in=3)
    b = torch.tensor([[1.0, 0.0], [2.0, 1.0]])              # (out=2, r=2)
    expected = torch.tensor([[1.0, 2.0, 0.0], [2.0, 5.0, -1.0]]) * 0.5
    assert torch.equal(fold(a, b, 0.5), expected)
    assert torch.equal(fold(a, b, 0.5, transpose=True), expected.T)


def test_scale_rank_and_alpha_patterns_and_rslora(tmp_path: Path) -> None:
    key = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"
    tensors = {key.format(0, "A"): torch.ones(2, 3), key.format(0, "B"): torch.ones(4, 2),
               key.format(1, "A"): torch.ones(1, 3), key.format(1, "B"): torch.ones(4, 1)}
    plain = LoraAdapter(write_adapter(tmp_path / "plain", tensors, rank_pattern={"layers.1.self_attn.q_proj": 1},
                                       alpha_pattern={"1.self_attn.q_proj": 3}))
    assert plain.modules["model.layers.0.self_attn.q_proj.weight"].scale == 2.0       # 4 / 2
    assert plain.modules["model.layers.1.self_attn.q_proj.weight"].scale == 3.0       # 3 / 1
    assert torch.equal(plain.delta("model.layers.0.self_attn.q_proj.weight"), torch.full((4, 3), 4.0))
    rs = LoraAdapter(write_adapter(tmp_path / "rs", {k: v for k, v in tensors.items() if ".0." in k},
                                    use_rslora=True))
    assert rs.modules["model.layers.0.self_attn.q_proj.weight"].scale == pytest.approx(4 / math.sqrt(2))
    keep = lambda key, value: value  # noqa: E731
    assert PatternTable({"q_proj": 7}, keep).lookup("model.layers.0.self_attn.q_proj", 1) == 7
    assert PatternTable({"proj": 7}, keep).lookup("model.layers.0.self_attn.q_proj", 1) == 1  # dot boundary only


def test_fold_keeps_the_adapter_dtype(tmp_path: Path) -> None:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, generator=gen).bfloat16(), torch.randn(4, 2, generator=gen).bfloat16()
    adapter = LoraAdapter(write_adapter(tmp_path / "bf16", {key.format("A"): a, key.format("B"): b}))
    delta = adapter.delta("model.layers.0.self_attn.q_proj.weight")
    assert delta.dtype == torch.bfloat16
    # PEFT on the CPU: product in float32, cast back to the adapter's dtype
    assert torch.equal(delta, ((b.float() @ a.float()) * 2.0).bfloat16())


@pytest.mark.parametrize("config", [
    {"rank_pattern": {"layers.1.self_attn.q_proj": 2}, "alpha_pattern": {"v_proj": 3},
     "target_modules": ["q_proj", "v_proj", "embed_tokens"]},
    {"use_rslora": True, "target_modules": ["q_proj", "o_proj", "down_proj"]},
])
def test_vector_equals_peft_merge_and_unload(llama: Path, tmp_path: Path, config: dict) -> None:
    adapter = build_lora_adapter(llama, tmp_path / "adapter", seed=1, **config)
    extract_lora_vector(llama, adapter, tmp_path / "vector")
    vector = load_tensors(tmp_path / "vector")
    base = load_tensors(llama)
    merged = peft_merged_state(llama, adapter)
    changed = 0
    for name, weight in base.items():
        assert torch.equal(weight + vector[name], merged[name]), name
        changed += int(bool(vector[name].abs().sum() > 0))
    assert changed >= 4


def test_fan_in_fan_out_and_lora_bias_gpt2_equal_peft(tmp_path: Path) -> None:
    gpt2 = tiny_base("gpt2", tmp_path / "gpt2")
    adapter = build_lora_adapter(gpt2, tmp_path / "adapter", seed=2, target_modules=["c_attn"], fan_in_fan_out=True,
                                 lora_bias=True)
    extract_lora_vector(gpt2, adapter, tmp_path / "vector")
    vector, base, merged = load_tensors(tmp_path / "vector"), load_tensors(gpt2), peft_merged_state(gpt2, adapter)
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.bias"):
        assert vector[name].abs().sum() > 0
        assert torch.equal(base[name] + vector[name], merged[name]), name


def test_bf16_adapter_vector_keeps_dtype(llama: Path, tmp_path: Path) -> None:
    adapter = build_lora_adapter(llama, tmp_path / "adapter", seed=3, dtype=torch.bfloat16)
    info = extract_lora_vector(llama, adapter, tmp_path / "vector")
    vector = load_tensors(tmp_path / "vector")
    assert vector["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert vector["model.layers.0.mlp.up_proj.weight"].abs().sum() == 0
    assert info["source"] == "lora" and info["lora_tensors"] == 4


def test_bad_adapters_fail_with_one_line(llama: Path, tmp_path: Path) -> None:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    ok = {key.format("A"): torch.ones(2, 64), key.format("B"): torch.ones(64, 2)}
    cases = {
        "no such folder": (tmp_path / "nowhere", None),
        "DoRA": (write_adapter(tmp_path / "dora", ok, use_dora=True), None),
        "peft_type 'IA3'": (write_adapter(tmp_path / "ia3", ok, peft_type="IA3"), None),
        "modules_to_save": (write_adapter(tmp_path / "mts", ok, modules_to_save=["lm_head"]), None),
        "conv LoRA": (write_adapter(tmp_path / "conv", {key.format("A"): torch.ones(2, 64, 1, 1),
                                                          key.format("B"): torch.ones(64, 2, 1, 1)}), None),
        "does not have": (write_adapter(tmp_path / "arch", {k.replace("q_proj", "c_attn"): v for k, v in ok.items()}),
                          llama),
        "shape": (write_adapter(tmp_path / "shape", {key.format("A"): torch.ones(2, 32),
                                                       key.format("B"): torch.ones(64, 2)}), llama),
    }
    missing = tmp_path / "noweights"
    missing.mkdir()
    (missing / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (missing / "adapter_model.bin").write_bytes(b"pickle")
    cases["pickle"] = (missing, None)
    for fragment, (folder, base) in cases.items():
        with pytest.raises(MergelineError) as caught:
            if base is None:
                LoraAdapter(folder)
            else:
                extract_lora_vector(base, folder, tmp_path / "out")
        message = str(caught.value)
        assert fragment in message and "\n" not in message and str(folder) in message, message
    assert not (tmp_path / "out").exists()


def test_fold_into_model_is_peft_merge_and_unload(llama: Path, tmp_path: Path) -> None:
    from mergeline.merge.lora import fold_into_model

    adapter = build_lora_adapter(llama, tmp_path / "adapter", seed=4)
    fold_into_model(llama, adapter, tmp_path / "model")
    ours, merged = load_tensors(tmp_path / "model"), peft_merged_state(llama, adapter)
    assert set(ours) == set(load_tensors(llama))
    assert all(torch.equal(ours[n], merged[n]) for n in ours)
    assert (tmp_path / "model" / "config.json").is_file()
