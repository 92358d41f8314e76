"""TIES: METHODS §10 vectors, agreement with mergekit, the tie rule, and the exact global top-k."""

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods._global_topk import GlobalTopK
from mergeline.methods._sparsify import magnitude_mask, topk_mask

TAU1, TAU2 = [1.0, -2.0, 0.5], [-3.0, 1.0, 0.5]


@pytest.mark.parametrize(
    "normalize, density, expected",
    [(True, 1.0, [-3, -2, 0.5]), (False, 1.0, [-3, -2, 1.0]), (True, 0.7, [-3, -2, 0])],
)
def test_ties_vectors(run_method, vec, normalize, density, expected):
    out, _, _ = run_method(
        "ties",
        {"w": [vec(*TAU1), vec(*TAU2)]},
        params={"normalize": normalize},
        model_params=[{"weight": 1, "density": density}] * 2,
    )
    assert torch.equal(out["w"], vec(*expected))


def test_ties_global_scope_equals_tensor_scope_on_one_tensor(run_method, vec):
    out, report, _ = run_method(
        "ties",
        {"w": [vec(*TAU1), vec(*TAU2)]},
        params={"trim_scope": "global"},
        model_params=[{"weight": 1, "density": 0.7}] * 2,
    )
    assert torch.equal(out["w"], vec(-3, -2, 0))
    assert report["global_threshold"] == {"0": 1.0, "1": 1.0}


def test_ties_count_consensus(run_method, vec):
    # signs: [+,-,-] -> count -1 -> elected -, sum 1+(-0.5)+(-0.25)=0.25 -> elected +
    tensors = {"w": [vec(1.0), vec(-0.5), vec(-0.25)]}
    mps = [{"weight": 1}] * 3
    by_sum, _, _ = run_method("ties", tensors, model_params=mps)
    by_count, _, _ = run_method("ties", tensors, params={"consensus_method": "count"}, model_params=mps)
    assert torch.equal(by_sum["w"], vec(1.0))
    assert torch.equal(by_count["w"], vec(-0.375))


def _mergekit_ties(base, fts, weights, densities, **params):
    from mergekit.merge_methods.base import TensorEntry, TensorGroup
    from mergekit.merge_methods.registry import get

    entries = [TensorEntry(id="base", tensor=base, is_base=True)]
    entries += [TensorEntry(id=f"m{i}", tensor=ft) for i, ft in enumerate(fts)]
    ids = [f"m{i}" for i in range(len(fts))]
    parameters = {
        "int8_mask": False, "normalize": True, "rescale": False, "lambda": 1.0,
        "weight": dict(zip(ids, weights)), "density": dict(zip(ids, densities)),
    }
    parameters.update(params)
    return get("ties").merge_group(TensorGroup(entries=tuple(entries)), **parameters)


@pytest.mark.parametrize("rescale, lam", [(False, 1.0), (True, 0.7)])
def test_ties_matches_mergekit_on_distinct_magnitudes(run_method, rescale, lam):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, 48, generator=g)
    fts = [base + 0.1 * torch.randn(32, 48, generator=g) for _ in range(3)]
    weights, densities = [1.0, 0.6, -0.4], [0.2, 0.5, 0.9]
    expected = _mergekit_ties(base, fts, weights, densities, rescale=rescale, **{"lambda": lam})
    out, _, _ = run_method(
        "ties",
        {"w": [ft - base for ft in fts]},
        base={"w": base},
        params={"rescale": rescale, "lambda": lam},
        model_params=[{"weight": w, "density": d} for w, d in zip(weights, densities)],
    )
    # mergekit computes θ_i − θ_base itself and adds the base back in float32: compare to rounding.
    assert torch.allclose(base + out["w"], expected, atol=1e-6, rtol=0)


def test_trim_keeps_exactly_k_with_lowest_index_on_ties():
    x = torch.tensor([1.0, -3.0, 2.0, 2.0, -2.0, 0.5])
    mask = magnitude_mask(x, 0.5)  # k = 3: 3, then two of the three 2s (indices 2, 3)
    assert mask.tolist() == [False, True, True, True, False, False]
    assert magnitude_mask(x, 0.01).sum() == 1  # a positive density keeps at least one entry
    assert topk_mask(x.abs(), 0).sum() == 0


def _global_threshold(chunks, density):
    topk = GlobalTopK()
    for pass_index in range(topk.passes):
        for i, chunk in enumerate(chunks):
            topk.add(0, chunk.abs(), pass_index, f"t{i}")
        total = sum(c.numel() for c in chunks)
        topk.finalize(pass_index, {0: max(1, int(density * total))})
    return topk


@pytest.mark.parametrize("density", [0.001, 0.2, 0.5, 0.999])
def test_global_topk_exact_against_torch_topk(density):
    g = torch.Generator().manual_seed(7)
    # Mixed scales so values spread over many exponent bins, and a shared histogram bin is likely.
    chunks = [torch.randn(300, 70, generator=g) * s for s in (1e-4, 1.0, 30.0)] + [torch.randn(5, generator=g)]
    flat = torch.cat([c.reshape(-1) for c in chunks]).abs()
    k = max(1, int(density * flat.numel()))
    topk = _global_threshold(chunks, density)
    assert topk.thresholds[0] == float(torch.topk(flat, k).values[-1])
    kept = sum(int(topk.mask(0, c.abs()).sum()) for c in chunks)
    assert kept == k
    reference = torch.zeros_like(flat, dtype=torch.bool)
    reference[torch.topk(flat, k).indices] = True
    assert torch.equal(torch.cat([topk.mask(0, c.abs()).reshape(-1) for c in chunks]), reference)


def test_global_topk_rejects_nan():
    with pytest.raises(MergelineError, match="'t0'"):
        _global_threshold([torch.tensor([1.0, float("nan")])], 0.5)


def test_ties_global_trim_over_several_tensors(run_method):
    g = torch.Generator().manual_seed(11)
    tensors = {f"layers.{i}.w": [torch.randn(40, 10, generator=g) * (i + 1), torch.randn(40, 10, generator=g)]
               for i in range(3)}
    out, report, _ = run_method(
        "ties", tensors, params={"trim_scope": "global", "normalize": False},
        model_params=[{"weight": 1, "density": 0.1}, {"weight": 1, "density": 0.3}],
    )
    assert report["kept_fraction"] == {"0": 0.1, "1": 0.3}
    # Model 0's larger-scale tensors keep more of its entries than the smallest one.
    kept0 = [int((tensors[n][0] .abs() >= report["global_threshold"]["0"]).sum()) for n in tensors]
    assert kept0[2] > kept0[0] and sum(kept0) == 120


def test_ties_global_needs_one_density_per_model(run_method, vec):
    from mergeline.methods import get_method
    from mergeline.methods.base import TensorInputs

    cls = get_method("ties")
    p = cls.Parameters.model_validate({"trim_scope": "global"})
    method = cls(p, [cls.PerModel.model_validate({"weight": 1, "density": 0.5})])
    a = TensorInputs("a", None, [vec(1, 2)], [0], p, [cls.PerModel(weight=1, density=0.5)])
    b = TensorInputs("b", None, [vec(1, 2)], [0], p, [cls.PerModel(weight=1, density=0.4)])
    method.accumulate(a, 0)
    with pytest.raises(MergelineError, match="'b'"):
        method.accumulate(b, 0)


@pytest.mark.parametrize("density", [0.0, 1.5, -0.1])
def test_density_range_validated(density):
    import pydantic

    from mergeline.methods import get_method

    with pytest.raises(pydantic.ValidationError):
        get_method("ties").PerModel.model_validate({"weight": 1, "density": density})
