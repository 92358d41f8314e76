"""SCE: variance selection, energy weights, sign erase and the weighted disjoint mean."""

import torch

from mergeline.methods.sce import sce_weights, variance_across


def test_weights_signs_and_mean_by_hand(run_method, vec):
    t1, t2 = vec(1.0, -2.0, 0.5, 0.0), vec(3.0, 1.0, -0.5, 0.0)
    w1, w2 = 1.3125 / 3.875, 2.5625 / 3.875  # mean squares 1.3125 and 2.5625
    torch.testing.assert_close(torch.stack(sce_weights([t1, t2])), torch.tensor([w1, w2]))
    out, report, _ = run_method("sce", {"w": [t1, t2]})
    # votes 4, −1, 0, 0 → signs +, −, +, +; entry 0 both agree, 1 and 2 only t1, 3 nobody (0 / 1e-6)
    torch.testing.assert_close(out["w"], vec((w1 + 3 * w2) / (w1 + w2), -2.0, 0.5, 0.0))
    assert report["select_topk"] == 1.0


def test_select_topk_keeps_the_highest_variance_entries(run_method, vec):
    t1, t2 = vec(1.0, -2.0, 0.5, 0.0), vec(3.0, 1.0, -0.5, 0.0)
    torch.testing.assert_close(variance_across([t1, t2]), vec(1.0, 2.25, 0.25, 0.0))
    # 3 non-zero variances · 0.5 → 1 entry kept (entry 1); then weights 0.8, 0.2 and t1's sign wins
    out, _, _ = run_method("sce", {"w": [t1, t2]}, params={"select_topk": 0.5})
    torch.testing.assert_close(out["w"], vec(0.0, -2.0, 0.0, 0.0))


def test_all_zero_task_vectors_get_uniform_weights(vec):
    assert [float(w) for w in sce_weights([vec(0.0, 0.0), vec(0.0, 0.0)])] == [0.5, 0.5]
