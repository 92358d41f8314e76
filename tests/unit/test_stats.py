"""mergeline.stats against hand-computed values and scipy/statsmodels-free closed forms."""

from __future__ import annotations

import math

import pytest

from mergeline.errors import MergelineError
from mergeline.stats import as_bits, bootstrap_mean_interval, discordant, mcnemar_exact, paired_bootstrap, wilson_interval


def test_wilson_matches_the_closed_form_by_hand():
    # k=8, n=10, z=1.959964: centre (0.8 + z²/20)/(1 + z²/10), half z·sqrt(0.016 + z²/400)/(1 + z²/10)
    z = 1.959963984540054
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / denom
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(centre - half, abs=1e-12) and high == pytest.approx(centre + half, abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook value for 8/10


def test_wilson_edges_stay_in_unit_interval_and_reject_bad_counts():
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    with pytest.raises(MergelineError, match="k <= n"):
        wilson_interval(5, 4)
    with pytest.raises(MergelineError, match="level"):
        wilson_interval(1, 4, level=1.5)


def test_mcnemar_exact_matches_binomial_tail():
    a = "1" * 10 + "0" * 2 + "11" + "00"     # A right alone on 10, B right alone on 2 (plus agreements)
    b = "0" * 10 + "1" * 2 + "11" + "00"
    assert discordant(a, b) == (10, 2)
    # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(a, b) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(a, a) == 1.0
    assert mcnemar_exact([1, 0], [0, 1]) == 1.0  # one each way: min(1, 2 * 3/4)


def test_mcnemar_agrees_with_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [1] * 37 + [0] * 21 + [1] * 100
    b = [0] * 37 + [1] * 21 + [1] * 100
    expected = scipy_stats.binomtest(21, 58, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)


def test_paired_bootstrap_sees_a_real_difference_and_not_a_null_one():
    a = [1] * 80 + [0] * 20
    b = [1] * 60 + [0] * 40           # A is right on 20 more examples, B on none alone
    result = paired_bootstrap(a, b, iters=2000, seed=1)
    assert result["diff"] == pytest.approx(0.2)
    assert 0.1 < result["low"] < 0.2 < result["high"] < 0.3 and result["p"] < 0.01
    same = paired_bootstrap(a, a, iters=200)
    assert same["diff"] == 0.0 and same["p"] == 1.0


def test_paired_bootstrap_strata_average_per_group():
    # group 0: A +1 on all 4; group 1 (40 examples): no difference -> mean over groups 0.5, pooled 4/44
    a = [1] * 4 + [1] * 40
    b = [0] * 4 + [1] * 40
    strata = [0] * 4 + [1] * 40
    assert paired_bootstrap(a, b, strata=strata, iters=50)["diff"] == pytest.approx(0.5)
    assert paired_bootstrap(a, b, iters=50)["diff"] == pytest.approx(4 / 44)
    low, high = bootstrap_mean_interval(a, strata=strata, iters=50)
    assert low == high == 1.0


def test_bad_vectors_are_named():
    with pytest.raises(MergelineError, match="differ in length"):
        mcnemar_exact("101", "10")
    with pytest.raises(MergelineError, match="0 or 1"):
        as_bits([0, 2])
    with pytest.raises(MergelineError, match="strata"):
        paired_bootstrap("10", "01", strata=[0])
