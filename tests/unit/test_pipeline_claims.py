"""Paired comparisons over seeds (mergeline/pipeline/claims.py) on hand-made correctness vectors."""

from __future__ import annotations

import pytest

from mergeline.pipeline.claims import addition_comparisons, analogy_comparisons, negation_comparisons, verdict


@pytest.mark.parametrize("low, high, sign, expected", [
    (0.02, 0.05, +1, "holds here"),
    (-0.05, -0.02, +1, "does not hold here"),
    (-0.005, 0.008, +1, "does not hold here"),   # inside ±0.01: no effect of the size claimed
    (-0.02, 0.03, +1, "undecided"),
    (-0.05, -0.02, -1, "holds here"),            # a negation claims a lower accuracy
    (0.0, 0.2, +1, "undecided"),
])
def test_verdict_reads_the_interval_against_the_claimed_sign(low: float, high: float, sign: int,
                                                             expected: str) -> None:
    assert verdict(low, high, sign) == expected


def test_addition_pools_runs_and_tasks_as_strata() -> None:
    # run 0: news ties 1100 vs ta 1000 (+0.25), sentiment 10 vs 10 (0); run 1: news 11 vs 01 (+0.5), sentiment 0 vs 1 (−1)
    runs = [({"ties": "ties_a", "task_arithmetic": "ta_a"},
             {"ties_a": {"news": "1100", "sentiment": "10"}, "ta_a": {"news": "1000", "sentiment": "10"}}),
            ({"ties": "ties_b", "task_arithmetic": "ta_b"},
             {"ties_b": {"news": "11", "sentiment": "0"}, "ta_b": {"news": "01", "sentiment": "1"}})]
    (ties,) = addition_comparisons(runs, ["news", "sentiment"])
    assert ties.claim == "ties beats task_arithmetic (addition)" and (ties.n, ties.runs) == (9, 2)
    assert ties.diff == pytest.approx((0.25 + 0 + 0.5 - 1) / 4)
    assert ties.p == 1.0  # discordant 2 vs 1: 2 · P(X ≤ 1 | 3, ½) = 2 · 4/8
    assert ties.low <= ties.diff <= ties.high


def test_negation_is_compared_with_the_base_on_its_target_task_only() -> None:
    runs = [({("news", "task_arithmetic"): {"news": "0011", "control": "1111"}}, {"news": "1111", "control": "0000"})]
    (news,) = negation_comparisons(runs)
    assert news.claim == "task_arithmetic negation forgets news" and news.n == 4
    assert news.diff == pytest.approx(-0.5) and news.p == pytest.approx(0.5)  # 0 vs 2 discordant: 2 · ¼
    assert news.verdict == "undecided"  # four examples: the interval reaches 0
    many = [({("news", "ta"): {"news": "0" * 40}}, {"news": "1" * 40})]
    assert negation_comparisons(many)[0].verdict == "holds here"


def test_analogy_is_compared_with_c_alone_and_the_base_on_task_d() -> None:
    # run 0 on D: analogy 1110, τ_C alone 1000, base 0000; run 1: analogy 01, τ_C alone 11, base 00
    runs = [({"analogy": ("sentiment-other", "1110"), "transfer": ("sentiment-other", "1000")},
             {"sentiment-other": "0000", "sentiment-air": "1111"}),
            ({"analogy": ("sentiment-other", "01"), "transfer": ("sentiment-other", "11")}, {"sentiment-other": "00"})]
    transfer, base = analogy_comparisons(runs)
    assert transfer.claim == "analogy beats τ_C alone on D" and (transfer.n, transfer.runs) == (6, 2)
    assert transfer.diff == pytest.approx((0.5 - 0.5) / 2)  # +2 of 4 in run 0, −1 of 2 in run 1
    assert transfer.p == 1.0  # discordant 2 vs 1
    assert base.claim == "analogy beats the base on D" and base.n == 6
    assert base.diff == pytest.approx((0.75 + 0.5) / 2) and base.p == pytest.approx(0.125)  # 4 vs 0 discordant
    assert analogy_comparisons([({"transfer": ("d", "1")}, {"d": "0"})]) == []  # no analogy chosen: nothing
