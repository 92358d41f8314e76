"""The sampled-band k-th value is exact on large tensors, and combine leaves its inputs untouched."""

from __future__ import annotations

import pytest
import torch

from mergeline.methods._sparsify import combine, kth_largest, topk_mask


@pytest.mark.parametrize("k_fraction", [1e-6, 0.01, 0.2, 0.5, 0.9, 1.0])
def test_kth_largest_equals_full_selection(k_fraction: float) -> None:
    x = torch.randn(3_000_000, generator=torch.Generator().manual_seed(1)).abs()
    k = max(1, int(k_fraction * x.numel()))
    assert kth_largest(x, k) == torch.kthvalue(x, x.numel() - k + 1).values


def test_kth_largest_with_heavy_ties_like_bf16() -> None:
    # bf16 task vectors: many entries share a magnitude at the cut-off.
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).abs().float()
    for k in (1, 1000, 400_000, 1_999_999):
        assert kth_largest(x, k) == torch.kthvalue(x, x.numel() - k + 1).values
        mask = topk_mask(x, k)
        assert int(mask.sum()) == k  # exactly k kept, ties broken by index


def test_combine_does_not_modify_inputs() -> None:
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, 1.0, 0.5])
    before = (a.clone(), b.clone())
    out = combine([a, b], [2.0, 1.0], "sum", normalize=True, lam=1.0)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    # u = [2,-4,1], [-3,1,0.5]; votes [-1,-3,1.5] -> signs [-,-,+]; agreeing: [-3], [-4], [1, 0.5]
    assert torch.allclose(out, torch.tensor([-3.0, -4.0 / 2.0, 1.5 / 3.0]))
