"""Task arithmetic: METHODS §10 vectors, negation, identity, config validation."""

import pydantic
import pytest
import torch

from mergeline.methods import get_method


def test_ta_addition_vector(run_method, vec):
    out, report, _ = run_method(
        "task_arithmetic",
        {"w": [vec(1, 2), vec(3, -1)]},
        params={"lambda": 0.5},
        model_params=[{"weight": 1}, {"weight": 1}],
    )
    assert torch.equal(out["w"], vec(2, 0.5))
    assert report["lambda"] == 0.5 and report["normalize"] is False


def test_ta_negation_vector(run_method, vec):
    out, _, _ = run_method(
        "task_arithmetic", {"w": [vec(1, 2)]}, params={"lambda": 0.5}, model_params=[{"weight": -1}]
    )
    assert torch.equal(out["w"], vec(-0.5, -1))


def test_ta_one_model_lambda_one_returns_finetune(run_method):
    torch.manual_seed(0)
    base, ft = torch.randn(5, 7), torch.randn(5, 7)
    out, _, _ = run_method(
        "task_arithmetic", {"w": [ft - base]}, base={"w": base}, model_params=[{"weight": 1.0}]
    )
    assert torch.allclose(base + out["w"], ft, atol=1e-6)


def test_ta_added_then_negated_returns_base(run_method):
    torch.manual_seed(1)
    tau = torch.randn(4, 4)
    out, _, _ = run_method(
        "task_arithmetic", {"w": [tau, tau]}, model_params=[{"weight": 1.0}, {"weight": -1.0}]
    )
    assert torch.equal(out["w"], torch.zeros(4, 4))


def test_ta_normalize_divides_by_weight_sum(run_method, vec):
    out, _, _ = run_method(
        "task_arithmetic",
        {"w": [vec(1, 2), vec(3, -1)]},
        params={"normalize": True},
        model_params=[{"weight": 1}, {"weight": 3}],
    )
    assert torch.allclose(out["w"], vec(2.5, -0.25))


@pytest.mark.parametrize("bad", [{"weight": float("nan")}, {"weight": float("inf")}, {}, {"weight": 1, "x": 2}])
def test_ta_bad_model_params_fail_at_config_time(bad):
    with pytest.raises(pydantic.ValidationError):
        get_method("task_arithmetic").PerModel.model_validate(bad)


def test_ta_bad_lambda_fails():
    with pytest.raises(pydantic.ValidationError):
        get_method("task_arithmetic").Parameters.model_validate({"lambda": float("nan")})
    with pytest.raises(pydantic.ValidationError):
        get_method("task_arithmetic").Parameters.model_validate({"lamda": 1.0})
