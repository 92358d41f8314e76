"""TaLoS: round schedule, global threshold (METHODS §10 example), sensitivity scores, mask overlap."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from mergeline.errors import MergelineError
from mergeline.finetune.batching import choice_logprobs, collate, encode
from mergeline.finetune.talos import (
    global_mask_round,
    mask_density,
    mask_overlap,
    prunable_names,
    round_keep_fractions,
    sensitivity_scores,
    talos_mask,
)
from tests.lm_fixtures import load_tokenizer, tiny_llama, tiny_records


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_round_keep_fractions_follow_k_to_the_r_over_R():
    assert round_keep_fractions(0.1, 4) == pytest.approx([0.1**0.25, 0.1**0.5, 0.1**0.75, 0.1])
    assert [round(x, 3) for x in round_keep_fractions(0.1, 4)] == [0.562, 0.316, 0.178, 0.1]
    with pytest.raises(MergelineError, match="talos.keep"):
        round_keep_fractions(0.0, 4)


def test_methods_section_10_example_keeps_the_two_least_sensitive():
    mask = global_mask_round({"w": torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])}, None, 0.4)
    assert mask["w"].tolist() == [False, True, False, True, False]


def test_threshold_is_global_across_tensors_and_masks_only_shrink():
    scores = {"a": torch.tensor([1.0, 9.0, 2.0]), "b": torch.tensor([[8.0, 3.0], [7.0, 0.5]])}
    first = global_mask_round(scores, None, 0.6)  # 7 entries: int(0.6 * 7) = 4 kept, threshold 3
    assert first["a"].tolist() == [True, False, True] and first["b"].tolist() == [[False, True], [False, True]]
    # Round 2 re-scores: a formerly masked entry now scoring lowest must stay masked (+inf).
    rescored = {"a": torch.tensor([5.0, 0.0, 6.0]), "b": torch.tensor([[0.1, 4.0], [0.2, 1.0]])}
    second = global_mask_round(rescored, first, 2 / 7)
    assert second["a"].tolist() == [False, False, False] and second["b"].tolist() == [[False, True], [False, True]]


def test_iterative_rounds_reach_each_round_density():
    gen = torch.Generator().manual_seed(0)
    mask = None
    for fraction in round_keep_fractions(0.1, 4):
        scores = {"x": torch.rand(400, generator=gen), "y": torch.rand(20, 30, generator=gen)}
        mask = global_mask_round(scores, mask, fraction)
        assert mask_density(mask) == pytest.approx(fraction, abs=1 / 1000)


def test_prunable_set_is_linears_and_norms_only(tok):
    model = tiny_llama(vocab_size=len(tok))
    names = prunable_names(model)
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert "model.layers.1.post_attention_layernorm.weight" in names
    assert not any("embed" in n or "lm_head" in n for n in names)
    assert "model.norm.weight" in names  # the final norm trains by default, as in the authors' code
    assert len(names) == 2 * 9 + 1  # per block: q, k, v, o, gate, up, down + 2 norms; the final norm
    inner = prunable_names(model, final_norm=False)
    assert "model.norm.weight" not in inner and len(inner) == 2 * 9


def test_sensitivity_is_sum_of_squared_per_example_gradients_of_sampled_choice(tok):
    model = tiny_llama(vocab_size=len(tok))
    recs = tiny_records("beta", 3)
    names = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.input_layernorm.weight"]
    got = sensitivity_scores(model, tok, recs, names, torch.Generator().manual_seed(7), max_length=32)
    # By hand: same sampled choices, one plain autograd backward per example.
    gen = torch.Generator().manual_seed(7)
    dist = choice_logprobs(model, tok, recs, 32)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    params = dict(model.named_parameters())
    for rec, lp in zip(recs, dist):
        c = int(torch.multinomial(torch.softmax(lp, 0), 1, generator=gen))
        batch = collate([encode(tok, rec["prompt"], rec["choices"][c], 32)], pad=0)
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
        target = batch["labels"][0, 1:]
        keep = target != -100
        logp = torch.log_softmax(logits, -1)[keep].gather(-1, target[keep].unsqueeze(-1)).sum()
        grads = torch.autograd.grad(logp, [params[n] for n in names])
        for n, g in zip(names, grads):
            expected[n] += g**2
    for n in names:
        assert torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-12), n


def test_vmap_and_loop_agree_and_masked_entries_are_scaled(tok):
    model = tiny_llama(vocab_size=len(tok))
    recs = tiny_records("alpha", 5)
    names = prunable_names(model)[:4]
    params = dict(model.named_parameters())
    mask = {n: torch.rand(params[n].shape, generator=torch.Generator().manual_seed(1)) < 0.5 for n in names}
    weights_before = {n: params[n].detach().clone() for n in names}
    runs = [
        sensitivity_scores(model, tok, recs, names, torch.Generator().manual_seed(3), mask, per_sample=mode, chunk_size=2)
        for mode in ("vmap", "loop")
    ]
    for n in names:
        assert torch.allclose(runs[0][n], runs[1][n], rtol=1e-4, atol=1e-12)
        assert torch.equal(params[n].detach(), weights_before[n])  # scaling was temporary
    unmasked = sensitivity_scores(model, tok, recs, names, torch.Generator().manual_seed(3), None, per_sample="loop")
    assert any(not torch.allclose(runs[1][n], unmasked[n]) for n in names)


def test_functional_call_forward_matches_module_forward(tok):
    # The sensitivity code relies on functional_call with no attention mask being the module's forward.
    model = tiny_llama(vocab_size=len(tok))
    ids = torch.tensor([[5, 6, 7, 8]])
    params = {n: p.detach() for n, p in model.named_parameters()}
    assert torch.allclose(functional_call(model, params, (ids,)).logits, model(input_ids=ids).logits)


def test_talos_mask_on_tiny_model(tok):
    model = tiny_llama(vocab_size=len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    densities = []
    mask = talos_mask(
        model, tok, tiny_records("alpha", 4), keep=0.1, rounds=4, seed=0, max_length=32,
        log=lambda k, v, s: densities.append((s, v)),
    )  # fmt: skip
    assert sorted(mask) == sorted(prunable_names(model))
    assert all(m.dtype == torch.bool for m in mask.values())
    assert [s for s, _ in densities] == [1, 2, 3, 4]
    for (_, d), k in zip(densities, round_keep_fractions(0.1, 4)):
        assert d == pytest.approx(k, abs=1e-3)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    again = talos_mask(model, tok, tiny_records("alpha", 4), keep=0.1, rounds=4, seed=0, max_length=32)
    assert mask_overlap(mask, again) == 1.0


def test_mask_overlap_is_jaccard():
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    assert mask_overlap(a, b) == pytest.approx(1 / 3)
    with pytest.raises(MergelineError, match="share no tensor"):
        mask_overlap(a, {"v": torch.tensor([True])})
    with pytest.raises(MergelineError, match="mask tensor w"):
        mask_overlap(a, {"w": torch.tensor([True])})
