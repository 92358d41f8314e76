"""Linear (model soup) and SLERP."""

import math

import pydantic
import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods import get_method
from mergeline.methods.slerp import slerp


def test_linear_normalized_average(run_method, vec):
    out, _, _ = run_method("linear", {"w": [vec(1, 2), vec(3, -1)]}, model_params=[{"weight": 1}, {"weight": 3}])
    assert torch.allclose(out["w"], vec(2.5, -0.25))


def test_linear_unnormalized_sum(run_method, vec):
    out, _, _ = run_method(
        "linear", {"w": [vec(1, 2), vec(3, -1)]}, params={"normalize": False},
        model_params=[{"weight": 1}, {"weight": 3}],
    )
    assert torch.equal(out["w"], vec(10, -1))


def test_linear_zero_weight_sum_is_an_error(run_method, vec):
    with pytest.raises(MergelineError, match="'w'"):
        run_method("linear", {"w": [vec(1), vec(2)]}, model_params=[{"weight": 1}, {"weight": -1}])


def test_slerp_vector():
    out = slerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(out, torch.tensor([math.sqrt(2) / 2] * 2))


def test_slerp_endpoints_and_lerp_fallback():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(slerp(0.0, a, b), a, atol=1e-6)
    assert torch.allclose(slerp(1.0, a, b), b, atol=1e-5)
    near = a * 2.0  # collinear: cos = 1 -> lerp
    assert torch.allclose(slerp(0.25, a, near), 0.75 * a + 0.25 * near)


def test_slerp_matches_mergekit():
    from mergekit.merge_methods.slerp import slerp as mk_slerp

    torch.manual_seed(3)
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    expected = mk_slerp(torch.tensor([0.3]), a.unsqueeze(0), b.unsqueeze(0))[0]
    assert torch.allclose(slerp(0.3, a, b), expected, atol=1e-6, rtol=0)


def test_slerp_through_contract_with_base_listed_or_not(run_method):
    torch.manual_seed(2)
    base, other = torch.randn(6), torch.randn(6)
    listed, _, _ = run_method("slerp", {"w": [base, other]}, base={"w": base}, params={"t": 0.4})
    alone, _, _ = run_method("slerp", {"w": [other]}, base={"w": base}, params={"t": 0.4})
    assert torch.equal(listed["w"], alone["w"])
    assert torch.equal(listed["w"], slerp(0.4, base, other))


@pytest.mark.parametrize("bad", [{}, {"t": 1.5}, {"t": -0.1}, {"t": float("nan")}])
def test_slerp_t_validated(bad):
    with pytest.raises(pydantic.ValidationError):
        get_method("slerp").Parameters.model_validate(bad)
