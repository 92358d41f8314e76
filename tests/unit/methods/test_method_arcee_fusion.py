"""Arcee Fusion: importance = |Δ| · KL of the rows' softmaxes; keep Δ above median + 1.5 IQR; the
seeded quantile sample of large tensors."""

import torch

from mergeline.methods.arcee_fusion import SAMPLE_SIZE, fusion_threshold, importance


def test_only_outlying_importance_is_kept(run_method, vec):
    base = {"w": torch.zeros(8)}
    other = vec(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0)
    # one row: importance = |Δ| · KL with KL > 0; sorted[int(q·7)] = 0.2, 0.4, 0.6 → τ = (0.4 + 1.5·0.4)·KL
    kl = importance(torch.zeros(8), other)[0] / 0.1
    assert kl > 0
    torch.testing.assert_close(fusion_threshold(importance(torch.zeros(8), other), seed=0), 1.0 * kl)
    out, _, _ = run_method("arcee_fusion", {"w": [other]}, base=base)
    assert torch.equal(out["w"], vec(0, 0, 0, 0, 0, 0, 0, 5.0))


def test_kl_is_per_row(vec):
    base = torch.zeros(2, 3)
    other = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])  # row 1 is a uniform shift: KL 0
    scores = importance(base, other)
    assert scores[0].gt(0).any() and torch.allclose(scores[1], torch.zeros(3), atol=1e-6)


def test_large_tensors_use_a_seeded_sample():
    scores = torch.rand(SAMPLE_SIZE + 1000, generator=torch.Generator().manual_seed(0))
    first, again, other = (fusion_threshold(scores, seed=s) for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(float(first) - 1.25) < 0.01  # uniform[0, 1): median ½ + 1.5 · IQR ½
