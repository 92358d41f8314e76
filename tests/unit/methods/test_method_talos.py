"""TaLoS merge side: TA over sparse vectors, optional masks, non-zero fraction report."""

import pytest
import torch

from mergeline.errors import MergelineError


def test_talos_masked_sum_and_report(run_method, vec):
    tensors = {"w": [vec(1, 2, 0, 4), vec(1, 1, 1, 1)]}
    masks = [{"w": vec(1, 0, 1, 1)}, None]  # model 1 has no mask: used as is
    out, report, _ = run_method(
        "talos", tensors, params={"lambda": 0.5}, model_params=[{}, {"weight": -1}],
        model_inputs={"mask": masks},
    )
    assert torch.equal(out["w"], 0.5 * (vec(1, 0, 0, 4) - vec(1, 1, 1, 1)))
    assert report["nonzero_fraction"] == {"0": 0.5, "1": 1.0}


def test_talos_mask_shape_checked(run_method, vec):
    with pytest.raises(MergelineError, match="'w'"):
        run_method("talos", {"w": [vec(1, 2)]}, model_inputs={"mask": [{"w": vec(1)}]})
