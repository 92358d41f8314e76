"""Dense and masked fine-tuning on a tiny random Llama: learning, determinism, masked AdamW."""

from __future__ import annotations

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.finetune.full import FinetuneConfig, finetune, lr_factor
from mergeline.finetune.talos import MaskedAdamW
from tests.lm_fixtures import load_tokenizer, tiny_llama, tiny_records


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _cfg(**kw) -> FinetuneConfig:
    base = {"steps": 10, "batch_size": 8, "lr": 1e-2, "max_length": 32, "seed": 0}
    return FinetuneConfig(**(base | kw))


def test_loss_goes_down_on_a_learnable_task(tok):
    model = tiny_llama(vocab_size=len(tok))
    logs = []
    out = finetune(model, tok, tiny_records("alpha", 8), _cfg(), log=lambda k, v, s: logs.append((k, v, s)))
    losses = out["losses"]
    assert len(losses) == 10
    assert losses[-1] < losses[0] - 0.5
    assert [s for k, _, s in logs if k == "train/loss"] == list(range(10))


def test_same_seed_gives_identical_weights_and_other_seed_does_not(tok):
    recs = tiny_records("alpha", 12)
    models = [tiny_llama(vocab_size=len(tok)) for _ in range(3)]
    finetune(models[0], tok, recs, _cfg(steps=3, batch_size=4, seed=1))
    finetune(models[1], tok, recs, _cfg(steps=3, batch_size=4, seed=1))
    finetune(models[2], tok, recs, _cfg(steps=3, batch_size=4, seed=2))
    sd = [m.state_dict() for m in models]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert any(not torch.equal(sd[0][k], sd[2][k]) for k in sd[0])


def test_frozen_embeddings_do_not_move_and_flags_are_restored(tok):
    model = tiny_llama(vocab_size=len(tok))
    emb = model.get_input_embeddings().weight.detach().clone()
    q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    finetune(model, tok, tiny_records("alpha", 8), _cfg(steps=2))
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, q)
    assert all(p.requires_grad for p in model.parameters())


def test_masked_adamw_never_touches_masked_entries_even_with_weight_decay():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5))
    dense = torch.nn.Parameter(torch.randn(3))
    mask = torch.rand(6, 5) > 0.5
    w0, d0 = w.detach().clone(), dense.detach().clone()
    opt = MaskedAdamW([("w", w), ("dense", dense)], {"w": mask}, lr=0.1, weight_decay=0.5)
    for _ in range(5):
        opt.zero_grad()
        ((w * torch.randn(6, 5)).sum() + (dense**2).sum()).backward()
        opt.step()
    assert torch.equal(w.detach()[~mask], w0[~mask])
    assert torch.all(w.detach()[mask] != w0[mask])
    assert torch.all(dense.detach() != d0)  # no mask entry: dense update


def test_masked_adamw_with_full_mask_matches_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 4))
    b = torch.nn.Parameter(a.detach().clone())
    ours = MaskedAdamW([("p", a)], {"p": torch.ones(4, 4, dtype=torch.bool)}, lr=0.05, weight_decay=0.1)
    ref = torch.optim.AdamW([b], lr=0.05, weight_decay=0.1)
    for step in range(4):
        g = torch.randn(4, 4, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_masked_adamw_matches_torch_adamw_when_tensors_skip_steps():
    # tensors without a gradient skip a step, so their step counts (and bias corrections) part ways;
    # a full-mask tensor and a tensor without a mask must both follow torch's AdamW step for step
    torch.manual_seed(0)
    start = [torch.randn(4, 4), torch.randn(3)]
    ours_p = [torch.nn.Parameter(t.clone()) for t in start]
    ref_p = [torch.nn.Parameter(t.clone()) for t in start]
    ours = MaskedAdamW([("w", ours_p[0]), ("b", ours_p[1])], {"w": torch.ones(4, 4, dtype=torch.bool)},
                       lr=0.05, weight_decay=0.1)
    ref = torch.optim.AdamW(ref_p, lr=0.05, weight_decay=0.1)
    for step in range(6):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(4, 4, generator=gen), None if step % 2 else torch.randn(3, generator=gen)]
        for params in (ours_p, ref_p):
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone()
        ours.step()
        ref.step()
    assert ours.state[ours_p[0]]["step"] == 6 and ours.state[ours_p[1]]["step"] == 3
    for a, b in zip(ours_p, ref_p):
        assert torch.allclose(a, b, atol=1e-6)


def test_finetune_with_mask_trains_only_the_mask(tok):
    model = tiny_llama(vocab_size=len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    name = "model.layers.1.mlp.down_proj.weight"
    mask = {name: torch.rand(before[name].shape, generator=torch.Generator().manual_seed(0)) < 0.2}
    out = finetune(model, tok, tiny_records("alpha", 8), _cfg(steps=3, weight_decay=0.1), mask=mask)
    after = dict(model.named_parameters())
    assert out["trainable_entries"] == int(mask[name].sum())
    assert torch.equal(after[name].detach()[~mask[name]], before[name][~mask[name]])
    assert not torch.equal(after[name].detach()[mask[name]], before[name][mask[name]])
    for other in before:
        if other != name:
            assert torch.equal(after[other].detach(), before[other]), other


def test_mask_errors_name_the_tensor(tok):
    model = tiny_llama(vocab_size=len(tok))
    with pytest.raises(MergelineError, match="mask tensor model.nope.weight"):
        finetune(model, tok, tiny_records("alpha", 2), _cfg(steps=1), mask={"model.nope.weight": torch.ones(2, dtype=torch.bool)})
    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(MergelineError, match=f"mask tensor {name}: shape"):
        finetune(model, tok, tiny_records("alpha", 2), _cfg(steps=1), mask={name: torch.ones(3, dtype=torch.bool)})


def test_lr_schedule_warmup_then_cosine():
    cfg = _cfg(steps=10, warmup=2)
    factors = [lr_factor(s, cfg) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(x >= y for x, y in zip(factors[2:], factors[3:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 7 / 8)).item()))
    assert lr_factor(9, _cfg(schedule="constant")) == 1.0


def test_bfloat16_autocast_runs_and_keeps_fp32_weights(tok):
    model = tiny_llama(vocab_size=len(tok))
    out = finetune(model, tok, tiny_records("alpha", 4), _cfg(steps=2, batch_size=4, dtype="bfloat16"))
    assert all(torch.isfinite(torch.tensor(out["losses"])))
    assert all(p.dtype == torch.float32 for p in model.parameters())
