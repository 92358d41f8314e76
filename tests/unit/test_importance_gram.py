"""RegMean's Gram matrices on a tiny Llama: XᵀX of every linear layer's inputs, padding left out."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mergeline.finetune.batching import encode_records, read_records
from mergeline.finetune.checkpoint import load_causal_lm
from mergeline.importance.gram import GramConfig, gram_matrices, linear_layers
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
    grams = gram_matrices(model_dir, calib, GramConfig(calib_examples=5, batch_size=2, max_length=48))
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
    two = gram_matrices(model_dir, calib, GramConfig(calib_examples=2, batch_size=8))
    hand, _ = _hand_grams(model_dir, calib, 2)
    name = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(two[name].double(), hand[name], rtol=1e-5, atol=1e-6)


def test_gpt2_conv1d_layers_are_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from mergeline.errors import MergelineError

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(MergelineError, match=r"'transformer.h.0.attn.c_attn' is a Conv1D layer"):
        linear_layers(model)
