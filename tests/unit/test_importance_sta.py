"""STA importance |g ⊙ τ| against a hand computation on a tiny Llama, options, save/load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mergeline.errors import MergelineError
from mergeline.finetune.batching import read_records
from mergeline.finetune.checkpoint import load_causal_lm
from mergeline.importance.sta import StaImportanceConfig, load_importance, save_importance, sta_importance
from tests.lm_fixtures import build_tiny_llama, write_tiny_tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sta")
    base = build_tiny_llama(root / "base", seed=0)
    # A "fine-tuned" model: the base with a seeded perturbation of every tensor (no training needed).
    model, tok = load_causal_lm(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(root / "ft")
    tok.save_pretrained(root / "ft")
    calib = write_tiny_tasks(root / "tasks", n=5, tasks=("beta",))["beta"] / "validation.jsonl"
    return root, base, root / "ft", calib


def _hand_gradient(model_dir, records):
    """(1/N) Σ_x mean-over-answer-tokens cross-entropy, differentiated with plain autograd."""
    model, tok = load_causal_lm(model_dir)
    model.eval()
    total = 0.0
    for rec in records:
        prompt = tok(rec["prompt"], add_special_tokens=False)["input_ids"]
        whole = tok(rec["prompt"] + rec["choices"][rec["label"]], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([whole])
        logits = model(input_ids=ids).logits[0]
        # token t is predicted by position t - 1; the answer is whole[len(prompt):]
        total = total + F.cross_entropy(logits[len(prompt) - 1 : -1], ids[0, len(prompt) :]) / len(records)
    total.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, dict(model.named_parameters())


def test_default_is_abs_grad_at_finetuned_times_task_vector(setup):
    root, base, ft, calib = setup
    logs = []
    scores = sta_importance(ft, base, calib, StaImportanceConfig(batch_size=2), log=lambda k, v, s: logs.append(k))
    grads, _ = _hand_gradient(ft, read_records(calib))
    b, f = load_file(base / "model.safetensors"), load_file(ft / "model.safetensors")
    assert set(scores) == set(grads) == set(f)
    for name in scores:
        expected = (grads[name] * (f[name] - b[name])).abs()
        assert torch.allclose(scores[name], expected, rtol=1e-3, atol=1e-9), name
    assert "importance/calib_loss" in logs


def test_weight_and_pretrained_options(setup):
    root, base, ft, calib = setup
    cfg = StaImportanceConfig(importance_of="weight", grad_at="pretrained", calib_examples=2, exclude=["embed_tokens"])
    scores = sta_importance(ft, base, calib, cfg)
    grads, params = _hand_gradient(base, read_records(calib, limit=2))
    assert not any("embed_tokens" in n for n in scores)
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.allclose(scores[name], (grads[name] * params[name].detach()).abs(), rtol=1e-3, atol=1e-9)


def test_save_and_load_round_trip(setup, tmp_path):
    root, base, ft, calib = setup
    scores = {"a": torch.rand(3, 4), "model.layers.0.x.weight": torch.rand(5)}
    path = save_importance(scores, tmp_path / "imp" / "sta.safetensors")
    back = load_importance(path)
    assert set(back) == set(scores) and all(torch.equal(back[k], scores[k]) for k in scores)
    assert [p.name for p in path.parent.iterdir()] == ["sta.safetensors"]  # no temporary left behind


def test_excluding_everything_is_an_error(setup):
    root, base, ft, calib = setup
    with pytest.raises(MergelineError, match="importance.exclude"):
        sta_importance(ft, base, calib, StaImportanceConfig(exclude=[".*"], calib_examples=1))


def test_bad_calibration_file(setup, tmp_path):
    root, base, ft, calib = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "prompt": "p", "choices": ["a"], "label": 5}) + "\n")
    with pytest.raises(MergelineError, match="bad.jsonl:1"):
        sta_importance(ft, base, bad)
