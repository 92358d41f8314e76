"""NuSLERP: the weight ratio, flattened / row / column interpolation, the collinear fallback, with and
without a base."""

import math

import torch

H = 1 / math.sqrt(2)


def test_orthogonal_halfway_and_collinear_lerp(run_method, vec):
    halfway, report, _ = run_method("nuslerp", {"w": [vec(1.0, 0.0), vec(0.0, 1.0)]},
                                    model_params=[{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(halfway["w"], vec(H, H))  # t = ½, Ω = π/2
    lerp, _, _ = run_method("nuslerp", {"w": [vec(1.0, 0.0), vec(2.0, 0.0)]},
                            model_params=[{"weight": 1.0}, {"weight": 3.0}])
    torch.testing.assert_close(lerp["w"], vec(1.75, 0.0))  # t = 3/4 on collinear vectors
    assert report["nuslerp_flatten"] is True


def test_base_makes_it_a_slerp_of_task_vectors(run_method, vec):
    out, _, _ = run_method("nuslerp", {"w": [vec(2.0, 1.0), vec(1.0, 2.0)]}, base={"w": vec(1.0, 1.0)},
                           model_params=[{"weight": 0.0}, {"weight": 0.0}])  # weights sum to 0: t = ½
    torch.testing.assert_close(out["w"], vec(1 + H, 1 + H))


def test_rows_and_columns(run_method):
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    mps = [{"weight": 1.0}, {"weight": 1.0}]
    rows, _, _ = run_method("nuslerp", {"w": [a, b]}, params={"nuslerp_flatten": False}, model_params=mps)
    torch.testing.assert_close(rows["w"], torch.tensor([[H, H], [1.5, 0.0]]))
    cols, _, _ = run_method("nuslerp", {"w": [a.T, b.T]}, model_params=mps,
                            params={"nuslerp_flatten": False, "nuslerp_row_wise": True})
    torch.testing.assert_close(cols["w"], torch.tensor([[H, H], [1.5, 0.0]]).T)
