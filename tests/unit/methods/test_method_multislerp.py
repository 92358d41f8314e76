"""Multi-SLERP: tangent-space barycentre on the sphere, norm scaling, base handling, fallbacks."""

import math

import pytest
import torch

from mergeline.errors import MergelineError

H = 1 / math.sqrt(2)


def test_two_orthogonal_models_meet_halfway_at_the_mean_norm(run_method, vec):
    out, report, _ = run_method("multislerp", {"w": [vec(2.0, 0.0), vec(0.0, 4.0)]},
                                model_params=[{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(out["w"], vec(3 * H, 3 * H))  # direction (1, 1)/√2, norm (2 + 4)/2
    assert report["normalize_weights"] is True


def test_base_is_the_origin_and_one_model_is_returned_as_is(run_method, vec):
    out, _, _ = run_method("multislerp", {"w": [vec(2.0, 1.0), vec(1.0, 2.0)]}, base={"w": vec(1.0, 1.0)},
                           model_params=[{"weight": 0.5}, {"weight": 0.5}])
    torch.testing.assert_close(out["w"], vec(1 + H, 1 + H))
    single, _, _ = run_method("multislerp", {"w": [vec(3.0, -1.0)]}, base={"w": vec(1.0, 1.0)},
                              model_params=[{"weight": 2.0}])
    assert torch.equal(single["w"], vec(3.0, -1.0))


def test_cancelling_models(run_method, vec):
    two, _, _ = run_method("multislerp", {"w": [vec(1.0, 0.0), vec(-1.0, 0.0)]},
                           model_params=[{"weight": 1.0}, {"weight": 1.0}])
    assert torch.equal(two["w"], vec(0.0, 0.0))  # falls back to Σ w_i x_i
    with pytest.raises(MergelineError, match="tensor 'w': multislerp inputs cancel out"):
        run_method("multislerp", {"w": [vec(1.0, 0.0), vec(-1.0, 0.0), vec(0.0, 0.0)]},
                   model_params=[{"weight": 1.0}] * 3)
