"""Karcher mean: the geodesic mean on the circle (not the Euclidean one), norm scaling, zero inputs, and
mergekit's "ignored" base (appended as one more input)."""

import math

import pytest
import torch

from mergeline.merge.checks import check_config
from mergeline.merge.config import MergeConfig, input_indices, with_base_input
from mergeline.errors import MergelineError
from mergeline.methods import get_method


def test_geodesic_mean_of_three_directions(run_method, vec):
    # angles 0°, 0°, 90°: the Karcher mean is at 30°; the Euclidean mean's direction is at 26.57°
    out, report, _ = run_method("karcher", {"w": [vec(1.0, 0.0), vec(2.0, 0.0), vec(0.0, 3.0)]},
                                params={"max_iter": 50, "tol": 1e-7})
    torch.testing.assert_close(out["w"], 2.0 * vec(math.cos(math.pi / 6), math.sin(math.pi / 6)), atol=1e-5, rtol=0)
    assert report == {"method": "karcher", "max_iter": 50, "tol": 1e-7}
    first_step, _, _ = run_method("karcher", {"w": [vec(1.0, 0.0), vec(2.0, 0.0), vec(0.0, 3.0)]},
                                  params={"max_iter": 0})
    torch.testing.assert_close(first_step["w"], 2.0 * vec(2.0, 1.0) / math.sqrt(5))


def test_zero_inputs_count_in_the_norm_only(run_method, vec):
    out, _, _ = run_method("karcher", {"w": [vec(0.0, 0.0), vec(0.0, 4.0)]})
    torch.testing.assert_close(out["w"], vec(0.0, 2.0))  # direction of the non-zero one, norm (0 + 4)/2
    zeros, _, _ = run_method("karcher", {"w": [vec(0.0, 0.0), vec(0.0, 0.0)]})
    assert torch.equal(zeros["w"], vec(0.0, 0.0))


def test_base_model_is_one_more_input():
    config = MergeConfig.model_validate({"merge_method": "karcher", "base_model": "base",
                                         "models": [{"model": "a"}, {"model": "b"}]})
    full = with_base_input(config)
    assert [m.model for m in full.models] == ["a", "b", "base"]
    assert input_indices(full, get_method("karcher")) == [0, 1, 2]
    listed = MergeConfig.model_validate({"merge_method": "karcher", "base_model": "a", "models": [{"model": "a"}]})
    assert with_base_input(listed) == listed
    passthrough = MergeConfig.model_validate({"merge_method": "passthrough", "base_model": "base",
                                              "models": [{"model": "a"}]})
    with pytest.raises(MergelineError, match=r"'passthrough' takes 1 model\(s\).*, got 2"):
        check_config(with_base_input(passthrough))  # mergekit: passthrough takes one input
