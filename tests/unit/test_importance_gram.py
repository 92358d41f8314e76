"""RegMean's Gram matrices on a tiny Llama: XᵀX of every linear layer's inputs, padding left out; layers
that read one input share one stored matrix, and a merge from the shared file equals one from the full file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mergeline.finetune.batching import encode_records, read_records
from mergeline.finetune.checkpoint import load_causal_lm
from mergeline.importance.gram import (
    GramConfig, Grams, collect_grams, gram_matrices, linear_layers, load_grams, save_grams,
)
from mergeline.importance.sta import save_importance
from mergeline.io.safetensors_format import read_metadata
from mergeline.io.tensor_aliases import ALIASES_KEY
from mergeline.merge.config import MergeConfig
from mergeline.merge.engine import run_merge
from tests.lm_fixtures import build_tiny_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gram")
    model_dir = build_tiny_llama(root / "ft", seed=3)
    # records of different lengths, so that batches are padded
    words = ["apple", "river", "stone", "cloud", "maple", "tiger"]
    calib = root / "train.jsonl"
    calib.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "Words: " + " ".join(words[:i + 1]) + "\nFirst:",
                                         "choices": [" A", " B", " C", " D"], "label": i % 4}) + "\n"
                             for i in range(5)))
    return model_dir, calib


def _hand_grams(model_dir, calib, n):
    """Σ XᵀX / N with each record run alone (no padding), inputs captured by plain hooks."""
    model, tok = load_causal_lm(model_dir)
    records = read_records(calib, limit=n)
    totals: dict[str, torch.Tensor] = {}
    modules = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, args, out, key=key: seen.__setitem__(key, args[0][0].double()))
               for key, m in modules.items()]
    with torch.no_grad():
        for item in encode_records(tok, records, 48):
            model(input_ids=torch.tensor([item.input_ids]))
            for key, x in seen.items():
                totals[key] = totals.get(key, 0) + x.T @ x
    for h in handles:
        h.remove()
    return {k: v / len(records) for k, v in totals.items()}, model


def test_records_xtx_of_each_linear_input(setup):
    model_dir, calib = setup
    # batches of 2 records of different lengths: padded positions must not count
    grams = gram_matrices(model_dir, calib, GramConfig(calib_examples=5, batch_size=2, max_length=48)).expanded()
    hand, model = _hand_grams(model_dir, calib, 5)
    _, tok = load_causal_lm(model_dir)
    assert len({len(e.input_ids) for e in encode_records(tok, read_records(calib), 48)}) == 5
    weights = load_file(model_dir / "model.safetensors")
    # the tied LM head shares the embedding: no Gram matrix; every other linear weight has one
    assert "lm_head.weight" not in grams and "lm_head.weight" not in weights
    assert set(grams) == set(hand) - {"lm_head.weight"} == set(linear_layers(model))
    assert len(grams) == 2 * 7
    for name, g in grams.items():
        assert name in weights and g.dtype == torch.float32
        assert g.shape == (weights[name].shape[1],) * 2, name
        torch.testing.assert_close(g.double(), hand[name], rtol=1e-5, atol=1e-6)
        assert torch.equal(g, g.T)


def test_first_n_examples_only(setup):
    model_dir, calib = setup
    two = gram_matrices(model_dir, calib, GramConfig(calib_examples=2, batch_size=8)).expanded()
    hand, _ = _hand_grams(model_dir, calib, 2)
    name = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(two[name].double(), hand[name], rtol=1e-5, atol=1e-6)


def test_gpt2_conv1d_layers_are_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from mergeline.errors import MergelineError

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(MergelineError, match=r"'transformer.h.0.attn.c_attn' is a Conv1D layer"):
        linear_layers(model)


def _layer_names(layer: int) -> dict[str, str]:
    prefix = f"model.layers.{layer}."
    return {short: f"{prefix}{part}.{short}.weight" for part, shorts in
            (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
            for short in shorts}


def test_layers_reading_one_input_share_one_stored_matrix(setup, tmp_path):
    model_dir, calib = setup
    grams = gram_matrices(model_dir, calib, GramConfig(calib_examples=5, batch_size=2))
    hand, _ = _hand_grams(model_dir, calib, 5)
    expected_aliases = {}
    for layer in range(2):
        n = _layer_names(layer)
        expected_aliases |= {n["k_proj"]: n["q_proj"], n["v_proj"]: n["q_proj"], n["up_proj"]: n["gate_proj"]}
        # o_proj and down_proj read inputs of their own: stored, never aliased
        assert {n["q_proj"], n["o_proj"], n["gate_proj"], n["down_proj"]} <= set(grams.matrices)
    assert grams.aliases == expected_aliases
    assert len(grams.matrices) == 2 * 4
    expanded = grams.expanded()
    for alias, stored in grams.aliases.items():
        assert expanded[alias] is grams.matrices[stored]
        torch.testing.assert_close(expanded[alias].double(), hand[alias], rtol=1e-5, atol=1e-6)

    path = save_grams(grams, tmp_path / "gram.safetensors")
    assert set(load_file(path)) == set(grams.matrices)
    assert json.loads(read_metadata(path)[ALIASES_KEY]) == expected_aliases
    loaded = load_grams(path)
    assert loaded.aliases == grams.aliases
    assert all(torch.equal(loaded.expanded()[k], v) for k, v in expanded.items())


class _Toy(torch.nn.Module):
    """Linear layers on one embedding: ``b`` reads ``a``'s input object, ``c`` an equal copy of it,
    ``d`` ``a``'s object in the first forward pass only (a copy afterwards); ``f`` reads ``e``'s input
    object after it was doubled in place."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, 4)
        torch.nn.init.normal_(self.embed.weight, generator=gen)
        self.a, self.b, self.c, self.d, self.e, self.f = (torch.nn.Linear(4, 3) for _ in range(6))
        self.calls = 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        self.calls += 1
        shared_first = x if self.calls == 1 else x.clone()
        y = x.clone()
        first = self.e(y)
        y.mul_(2.0)
        return self.a(x) + self.b(x) + self.c(x.clone()) + self.d(shared_first) + first + self.f(y)


def test_distinct_input_objects_are_never_merged(setup):
    model_dir, calib = setup
    _, tok = load_causal_lm(model_dir)
    toy = _Toy(len(tok))
    grams = collect_grams(toy, tok, read_records(calib), GramConfig(calib_examples=5, batch_size=2))
    # equal values in a distinct tensor (c) are not sharing; d shared in the first batch only is split
    assert grams.aliases == {"b.weight": "a.weight"}
    assert set(grams.matrices) == {"a.weight", "c.weight", "d.weight", "e.weight", "f.weight"}
    assert toy.calls > 3  # the first try met d's copy in batch 2 and collected again
    for name in ("c.weight", "d.weight"):  # the same values as a's input, so the same matrix
        torch.testing.assert_close(grams.matrices[name], grams.matrices["a.weight"], rtol=0, atol=0)
    torch.testing.assert_close(grams.matrices["f.weight"], 4 * grams.matrices["e.weight"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("gpu_loop", [False, True])
def test_merge_from_the_shared_file_equals_the_merge_from_the_full_file(setup, tmp_path, monkeypatch, gpu_loop):
    model_dir, calib = setup
    base = build_tiny_llama(tmp_path / "base", seed=1)
    models = [model_dir, build_tiny_llama(tmp_path / "other", seed=5)]
    shared, full = [], []
    for k, model in enumerate(models):
        grams = gram_matrices(model, calib, GramConfig(calib_examples=5, batch_size=2))
        assert grams.aliases
        shared.append(str(save_grams(grams, tmp_path / f"shared{k}.safetensors")))
        full.append(str(save_importance(grams.expanded(), tmp_path / f"full{k}.safetensors")))
    if gpu_loop:  # the fetch-ahead loop resolves the aliases too
        from tests.unit.merge.test_merge_prefetch import _use_gpu_loop

        _use_gpu_loop(monkeypatch)

    def merge(files: list[str], out: str):
        return run_merge(MergeConfig.model_validate({
            "merge_method": "regmean", "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(m), "parameters": {"gram": f}} for m, f in zip(models, files)]}), tmp_path / out)

    a, b = merge(shared, "from_shared"), merge(full, "from_full")
    assert a.weight_sha256 == b.weight_sha256
    assert a.report["method"]["regmean_matrices"] == b.report["method"]["regmean_matrices"] == 2 * 7


def test_without_sharing_every_layer_stores_its_own_equal_matrix(setup):
    model_dir, calib = setup
    model, tok = load_causal_lm(model_dir)
    records = read_records(calib, limit=5)
    cfg = GramConfig(calib_examples=5, batch_size=2)
    shared = collect_grams(model, tok, records, cfg)
    full = collect_grams(model, tok, records, cfg, share_inputs=False)
    assert full.aliases == {} and len(full.matrices) == 2 * 7  # 7 linears a layer, no tied head
    expanded = shared.expanded()
    assert full.matrices.keys() == expanded.keys()
    assert all(torch.equal(full.matrices[n], expanded[n]) for n in full.matrices)
