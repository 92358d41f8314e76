"""NearSwap: near entries are swapped whole, far ones move by t."""

import torch


def test_near_entries_swap_and_far_ones_move_by_t(run_method, vec):
    base = {"w": vec(0.0, 0.0, 0.0, 1.0)}
    out, report, _ = run_method("nearswap", {"w": [vec(0.005, 0.5, -2.0, 1.0)]}, base=base, params={"t": 0.01})
    # w = clamp(t / |a − b|, 0, 1) = 1, 0.02, 0.005, 1 (equal entries: 1e-6 floor, w = 1)
    torch.testing.assert_close(out["w"], vec(0.005, 0.01, -0.01, 1.0))
    assert report == {"method": "nearswap", "t": 0.01}


def test_t_zero_keeps_the_base(run_method, vec):
    out, _, _ = run_method("nearswap", {"w": [vec(0.3, -0.2)]}, base={"w": vec(0.1, 0.1)}, params={"t": 0.0})
    assert torch.equal(out["w"], vec(0.1, 0.1))
