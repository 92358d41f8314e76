"""Passthrough: the one model's tensors, scaled where ``scale`` says."""

import torch


def test_copies_or_scales(run_method, vec):
    out, _, _ = run_method("passthrough", {"a": [vec(1.0, -2.0)]})
    assert torch.equal(out["a"], vec(1.0, -2.0))
    scaled, report, _ = run_method("passthrough", {"a": [vec(1.0, -2.0)]}, model_params=[{"scale": 0.5}])
    assert torch.equal(scaled["a"], vec(0.5, -1.0)) and report["models"] == [{"scale": 0.5}]
