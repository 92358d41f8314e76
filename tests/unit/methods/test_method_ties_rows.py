"""Row-separable TIES trim (``_row_trim``): hand-computed cut-offs and tie budgets, and row blocks that
give exactly the whole-tensor trim (exactly k kept; ties straddling the cut-off: the entries mergekit's
argsort keeps, found by one more pass that gathers the magnitudes)."""

from __future__ import annotations

import pytest
import torch

from mergeline.methods import _row_trim as rt
from mergeline.methods._sparsify import combine, magnitude_mask


def _trim(magnitudes: torch.Tensor, k: int, blocks: list[slice], band: tuple[float, float] | None = None) -> torch.Tensor:
    """The engine's flow on a 1-D tensor: observe every block, resolve (again if asked), mask the blocks."""
    n = magnitudes.numel()
    lo, hi = band or rt.band_from_sample(None, k, n)
    state = rt.TrimState(k, n, lo, hi)
    while not rt.resolve(state, [rt.observe(magnitudes[b], state.lo, state.hi) for b in blocks]):
        pass
    if state.gather:
        rt.resolve_by_sort(state, _gather(state, magnitudes, blocks))
    assert state.result is not None and state.result.kept == k and not state.gather and state.buffer is None
    return torch.cat([rt.block_mask(magnitudes[b], state.result, i) for i, b in enumerate(blocks)])


def _gather(state: rt.TrimState, magnitudes: torch.Tensor, blocks: list[slice]) -> list[int]:
    """The gathering pass: every block copied into its place of the state's buffer; their flat starts."""
    assert rt.start_gathers([state])
    assert state.buffer is not None
    return [rt.gather_into(state.buffer, magnitudes[b], (b.start, b.start + magnitudes[b].numel())) for b in blocks]


def test_cut_and_tie_budget_by_hand() -> None:
    # |δ| = [1, 3, 2, 2, 2, 0.5], k = 3: 3 is above the cut-off 2; two of the three 2s are kept, so the
    # counts cannot decide: the magnitudes are gathered and argsort picks (stable on so few entries:
    # indices 2 and 3), split over the blocks [0:3] and [3:6].
    a = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 0.5])
    state = rt.TrimState(3, 6, 0.0, float("inf"))
    assert rt.resolve(state, [rt.observe(a[:3], 0.0, float("inf")), rt.observe(a[3:], 0.0, float("inf"))])
    cut = state.result
    assert cut is not None and cut.value == 2.0 and cut.equal == [1, 2] and cut.kept == 3 and state.gather
    assert _gather(state, a, [slice(0, 3), slice(3, 6)]) == [0, 3]
    rt.resolve_by_sort(state, [0, 3])
    assert rt.block_mask(a[:3], cut, 0).tolist() == [0, 1, 1]
    assert rt.block_mask(a[3:], cut, 1).tolist() == [1, 0, 0]
    # k = 4 keeps every 2: no gathering, the counts decide
    state = rt.TrimState(4, 6, 0.0, float("inf"))
    assert rt.resolve(state, [rt.observe(a[:3], 0.0, float("inf")), rt.observe(a[3:], 0.0, float("inf"))])
    assert not state.gather and rt.block_mask(a[3:], state.result, 1).tolist() == [1, 1, 0]


def test_band_counts_its_ends_and_keeps_only_the_inside() -> None:
    a = torch.tensor([5.0, 2.0, 3.0, 2.0, 4.0, 1.0, 4.0])
    obs = rt.observe(a, 2.0, 4.0)
    assert (obs.above, obs.at_hi, obs.at_lo, obs.inner.tolist()) == (1, 2, 2, [3.0])
    assert rt.observe(a, 2.0, 2.0).at_hi == 2  # lo == hi (bf16 task vectors): counts only


@pytest.mark.parametrize("band", [(0.0, float("inf")), (2.0, 2.0), (0.1, 0.2), (4.0, 9.0), (2.0, 3.0)])
def test_a_missed_band_is_retried_and_stays_exact(band: tuple[float, float]) -> None:
    a = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 0.5, 4.0, 2.0])
    mask = _trim(a, 4, [slice(0, 3), slice(3, 5), slice(5, 8)], band)
    assert mask.bool().tolist() == magnitude_mask(a, 0.5, ties="argsort").tolist()  # 4, 3, then two 2s


@pytest.mark.parametrize("block", [1, 7, 1000, 20_000])
def test_row_blocks_equal_whole_tensor_trim_on_bf16_ties(block: int) -> None:
    g = torch.Generator().manual_seed(3)
    base = (torch.randn(20_000, generator=g) * 0.02).to(torch.bfloat16)
    tuned = (base.float() + torch.randn(20_000, generator=g) * 4e-4).to(torch.bfloat16)
    a = (tuned.float() - base.float()).abs()
    for density in (0.1, 0.5, 0.93):
        k = int(density * a.numel())
        blocks = [slice(s, s + block) for s in range(0, a.numel(), block)]
        for band in (None, rt.band_from_sample(a[torch.randint(a.numel(), (4096,), generator=g)], k, a.numel())):
            assert torch.equal(_trim(a, k, blocks, band).bool(), magnitude_mask(a, density, ties="argsort"))


def test_sampled_band_on_a_large_tensor_is_exact() -> None:
    a = torch.randn(1_500_000, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).float().abs()
    k = 600_000
    index = rt.sample_indices(a.numel())
    assert index is not None
    lo, hi = rt.band_from_sample(a[index], k, a.numel())
    blocks = [slice(s, s + 131_072) for s in range(0, a.numel(), 131_072)]
    assert torch.equal(_trim(a, k, blocks, (lo, hi)).bool(), magnitude_mask(a, k / a.numel(), ties="argsort"))


def test_nan_magnitudes_are_never_counted_and_nan_reaches_the_output() -> None:
    delta = torch.tensor([1.0, float("nan"), -2.0, 0.5])
    a = delta.abs()
    mask = _trim(a, 2, [slice(0, 2), slice(2, 4)])
    assert mask.tolist()[0] == 1 and mask.tolist()[2] == 1
    out = combine([delta, torch.tensor([1.0, 1.0, 1.0, 1.0])], [1.0, 1.0], "sum", True, 1.0,
                  masks=[mask, None])
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3]]).all()


def test_combine_float_masks_match_the_bool_rule() -> None:
    # METHODS §10 TIES vector (w = 1, density 0.7): τ1 → [1, −2, 0], τ2 → [−3, 1, 0] → [−3, −2, 0].
    t1, t2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, 1.0, 0.5])
    masks = [magnitude_mask(t, 0.7).float() for t in (t1, t2)]
    assert combine([t1, t2], [1.0, 1.0], "sum", True, 1.0, masks=masks).tolist() == [-3.0, -2.0, 0.0]


@pytest.mark.parametrize(("budget", "passes"), [(rt.GATHER_ENTRIES, [0, 2]), (1000, [0, 1, 1])])
def test_tied_models_are_gathered_within_the_budget(monkeypatch: pytest.MonkeyPatch, budget: int,
                                                    passes: list[int]) -> None:
    # Two models whose ties straddle the cut-off: the statistics pass, then their magnitudes gathered
    # together where they fit the budget, else one model per pass (never two tensor-sized buffers at
    # once); the merge equals the whole-tensor argsort trim either way.
    from mergeline.methods import get_method
    from mergeline.methods.base import TensorInputs

    monkeypatch.setattr(rt, "GATHER_ENTRIES", budget)
    g = torch.Generator().manual_seed(11)
    deltas = [((torch.randint(1, 5, (1000,), generator=g) * (torch.randint(0, 2, (1000,), generator=g) * 2 - 1))
               / 4).float() for _ in range(2)]
    cls = get_method("ties")
    params = cls.Parameters.model_validate({})
    mps = [cls.PerModel.model_validate({"weight": 1.0, "density": d}) for d in (0.3, 0.5)]
    ties = cls(params, mps)
    rows = [(0, 300), (300, 700), (700, 1000)]

    def block(i: int) -> TensorInputs:
        s, e = rows[i]
        return TensorInputs("w", None, [d[s:e] for d in deltas], [0, 1], params, mps, block=i, rows=(s, e))

    assert ties.begin_tensor("w", 1000, [0, 1], mps, None)
    buffers = []
    while True:
        seen = [ties.observe_block(block(i)) for i in range(len(rows))]
        buffers.append(sum(st is not None and st.buffer is not None for st in ties._trims["w"]))
        if ties.end_observation("w", seen):
            break
    assert buffers == passes  # counts; then both models' magnitudes, or model 0's and model 1's
    merged = torch.cat([ties.merge_tensor(block(i)) for i in range(len(rows))])
    masks = [magnitude_mask(d, mp.density, ties="argsort").float() for d, mp in zip(deltas, mps)]
    assert torch.equal(merged, combine(deltas, [1.0, 1.0], "sum", True, 1.0, masks=masks))
