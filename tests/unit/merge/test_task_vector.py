"""Task-vector arithmetic on state dicts."""

import pytest
import torch

from mergeline.merge import task_vector as tv
from mergeline.errors import MergelineError


def _sd(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "b": torch.randn(3, generator=g),
        "position_ids": torch.arange(5),
    }


def test_extract_skips_int_buffers_and_computes_in_float32():
    base, ft = _sd(0), _sd(1)
    vector = tv.extract(ft, base)
    assert set(vector) == {"w", "b"}
    assert vector["w"].dtype == torch.float32
    assert torch.equal(vector["w"], ft["w"].float() - base["w"].float())


def test_negation_of_added_vector_returns_base():
    base, ft = _sd(0), _sd(1)
    vector = tv.extract(ft, base)
    edited = tv.apply(base, vector, lam=0.7)
    restored = tv.apply({k: v.float() if v.is_floating_point() else v for k, v in edited.items()},
                        tv.negate(vector), lam=0.7)
    assert torch.allclose(restored["b"], base["b"], atol=1e-6)
    assert torch.equal(restored["position_ids"], base["position_ids"])


def test_apply_lambda_one_returns_finetune_and_keeps_dtype():
    base, ft = _sd(0), _sd(1)
    out = tv.apply(base, tv.extract(ft, base))
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"], ft["w"])
    assert torch.allclose(out["b"], ft["b"], atol=1e-6)  # float32 round trip: equal to rounding


def test_add_scale_analogy_ta_vector():
    t1, t2 = {"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, -1.0])}
    assert torch.equal(tv.scale(tv.add(t1, t2), 0.5)["x"], torch.tensor([2.0, 0.5]))
    a, b, c = {"x": torch.tensor([1.0])}, {"x": torch.tensor([4.0])}, {"x": torch.tensor([10.0])}
    assert torch.equal(tv.analogy(a, b, c)["x"], torch.tensor([13.0]))


def test_add_takes_union_of_keys():
    out = tv.add({"x": torch.ones(2)}, {"y": torch.ones(3)}, {"x": torch.ones(2)})
    assert torch.equal(out["x"], torch.full((2,), 2.0)) and torch.equal(out["y"], torch.ones(3))


@pytest.mark.parametrize(
    "call",
    [
        lambda: tv.extract({"w": torch.ones(2, 3)}, {"w": torch.ones(3, 2)}),
        lambda: tv.add({"w": torch.ones(2)}, {"w": torch.ones(3)}),
        lambda: tv.apply({"w": torch.ones(2)}, {"w": torch.ones(3)}),
        lambda: tv.extract({"w": torch.ones(2)}, {}),
        lambda: tv.apply({}, {"w": torch.ones(2)}),
    ],
)
def test_mismatches_name_the_tensor(call):
    with pytest.raises(MergelineError, match="'w'"):
        call()
