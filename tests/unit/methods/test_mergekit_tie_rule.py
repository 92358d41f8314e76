"""Magnitude trims keep the entries mergekit 0.1.5 keeps when equal magnitudes straddle the cut-off.

mergekit ranks with an unstable ``torch.argsort`` (TIES) or ``torch.sort`` (Breadcrumbs); on AVX-512
CPUs torch sorts with a vectorised quicksort, so among equal magnitudes the kept ones are neither the
first nor the last in flat order. Inputs here are built with many exact ties (bf16 task vectors, and
float32 values on a coarse grid) at sizes below and above the small-sort threshold.
"""

from __future__ import annotations

import pytest
import torch

from mergeline.methods import _row_trim as rt
from mergeline.methods._sparsify import magnitude_mask, outlier_mask, topk_mask

sparsify = pytest.importorskip("mergekit.sparsify")


def _tied(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if n < 100:  # four magnitudes, random signs
        signs = torch.randint(0, 2, (n,), generator=g) * 2 - 1
        return (torch.randint(1, 5, (n,), generator=g) * signs / 4).to(dtype)
    if dtype == torch.bfloat16:  # a bf16 fine-tune's task vector: magnitudes on a few hundred values
        base = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
        return (base.float() + torch.randn(n, generator=g) * 4e-4).to(torch.bfloat16) - base
    return (torch.randn(n, generator=g) * 30).round() / 1000  # float32 on a 1e-3 grid


def _rows(delta: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """The row-block trim as the engine runs it (statistics, the gathering pass where needed, masks)."""
    magnitudes = delta.abs().reshape(-1)
    starts = range(0, magnitudes.numel(), block)
    blocks = [magnitudes[s:s + block] for s in starts]
    state = rt.TrimState(k, magnitudes.numel(), *rt.band_from_sample(None, k, magnitudes.numel()))
    while not rt.resolve(state, [rt.observe(b, state.lo, state.hi) for b in blocks]):
        pass
    if state.gather:
        assert rt.start_gathers([state])
        assert state.buffer is not None
        placed = [rt.gather_into(state.buffer, b, (s, s + b.numel())) for s, b in zip(starts, blocks)]
        rt.resolve_by_sort(state, placed)
    assert state.result is not None
    return torch.cat([rt.block_mask(b, state.result, i) for i, b in enumerate(blocks)]).bool()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [17, 1000, 50_000, 720_000])
def test_ties_trim_keeps_mergekits_entries(dtype: torch.dtype, n: int) -> None:
    delta = _tied(n, dtype, seed=n)
    for density in (0.1, 0.3, 0.7):
        theirs = sparsify.magnitude(delta, density)
        ours = delta * magnitude_mask(delta, density, ties="argsort")
        assert torch.equal(ours, theirs), (n, dtype, density)
        k = max(1, int(density * n))
        assert torch.equal(delta * _rows(delta, k, 4096), theirs)
        cut = delta.abs().float().kthvalue(n - k + 1).values
        assert int((delta.abs().float() == cut).sum()) > 1  # the case under test: ties at the cut-off
    # the lowest-index rule (our own methods) differs from mergekit's on such inputs
    if n > 16:
        assert not torch.equal(delta * magnitude_mask(delta, 0.3), sparsify.magnitude(delta, 0.3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [100, 50_000, 300_000])
def test_breadcrumbs_mask_keeps_mergekits_entries(dtype: torch.dtype, n: int) -> None:
    delta = _tied(n, dtype, seed=n + 1)
    for density, gamma in ((0.5, 0.01), (0.2, 0.1), (0.9, 0.2)):
        theirs = sparsify.magnitude_outliers(delta, density, gamma=gamma)
        assert torch.equal(delta * outlier_mask(delta, density, gamma), theirs), (n, dtype, density, gamma)


def test_distinct_magnitudes_need_no_sort() -> None:
    delta = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk_mask(delta.abs(), 3000, ties="argsort"), topk_mask(delta.abs(), 3000))
    assert torch.equal(delta * magnitude_mask(delta, 0.3, ties="argsort"), sparsify.magnitude(delta, 0.3))


def test_sort_keys_are_float32_on_the_cpu_and_the_own_dtype_elsewhere() -> None:
    """mergekit upcasts the magnitudes to float32 before its sort on the CPU only; on another device
    (``--cuda``) it sorts them in their dtype. The row-trim gathers follow the same rule."""
    from mergeline.methods._sparsify import sort_keys

    cpu = torch.tensor([0.5, 0.25], dtype=torch.bfloat16)
    assert sort_keys(cpu).dtype == torch.float32 and sort_keys(cpu).tolist() == [0.5, 0.25]
    elsewhere = torch.empty(2, dtype=torch.bfloat16, device="meta")
    assert sort_keys(elsewhere).dtype == torch.bfloat16
    state = rt.TrimState(k=1, numel=2, lo=0.0, hi=float("inf"))
    state.note_keys(elsewhere)
    assert (state.keys_device.type, state.keys_dtype) == ("meta", torch.bfloat16)
    state.note_keys(cpu)
    assert (state.keys_device.type, state.keys_dtype) == ("cpu", torch.float32)
