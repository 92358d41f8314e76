"""RAM / RAM+ (tensor-local): unique entries whole (RAM+: scaled by λ_t), shared ones averaged."""

import torch


def _tvs(vec):
    return [vec(0.5, 0.5, 0.0, 1e-6, 0.4, 0.2), vec(0.3, 0.0, 0.2, 0.0, 0.0, 0.0), vec(0.1, 0.0, 0.0, 0.0, 0.0, 0.0)]


def test_ram_by_hand(run_method, vec):
    out, report, _ = run_method("ram", {"w": _tvs(vec)})
    # entry 0 shared by 3: mean 0.3; entries 1, 2, 4, 5 unique; entry 3 below ε = 1e-5
    torch.testing.assert_close(out["w"], vec(0.3, 0.5, 0.2, 0.0, 0.4, 0.2))
    assert report == {"method": "ram", "epsilon": 1e-5}


def test_ramplus_scales_unique_entries_by_the_shared_ratio(run_method, vec):
    out, _, _ = run_method("ramplus_tl", {"w": _tvs(vec)}, params={"r": 0.5, "alpha": 0.8})
    # τ1: 1 shared / 3 unique → λ = 1 + 0.5 · ⅓; τ2: 1 / 1 → ρ capped at 0.8 → λ = 1.4
    l1 = 1 + 0.5 / 3
    torch.testing.assert_close(out["w"], vec(0.3, 0.5 * l1, 0.2 * 1.4, 0.0, 0.4 * l1, 0.2 * l1))
