"""The quality report's section 1b (benchmarks/_quality_significance.py) on a hand-made result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _quality_significance import addition_significance, negation_significance, significance_section  # noqa: E402
from _quality_stats import acc_cell, compare  # noqa: E402


def _result() -> dict:
    ta = {"news": "1" * 80 + "0" * 20, "sentiment": "1" * 60 + "0" * 40, "control": "1" * 30 + "0" * 10}
    ties = {"news": "1" * 50 + "0" * 50, "sentiment": "1" * 60 + "0" * 40, "control": ta["control"]}
    dare = dict(ta, news="0" + "1" * 80 + "0" * 19)  # one example differs each way: no difference
    base = {"news": "1" * 40 + "0" * 60, "sentiment": "1" * 30 + "0" * 70, "control": "1" * 32 + "0" * 8}
    single = {"news": "1" * 90 + "0" * 10, "sentiment": "1" * 70 + "0" * 30}
    methods = {"task_arithmetic": {"correct": ta}, "ties": {"correct": ties}, "dare_ties": {"correct": dare}}
    negation = {"news": {"chance": 0.2, "methods": {"task_arithmetic": {
        "lambda": 1.0, "correct": {"news": "1" * 25 + "0" * 75, "control": "1" * 31 + "0" * 9}}}}}
    return {"seed": 0, "tasks": ["news", "sentiment"], "control": "control", "negation": negation,
            "addition": {"methods": methods, "correct": {"base": base, "single-full": single}}}


def _rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_addition_rows_carry_intervals_and_mcnemar_against_ta():
    table, claims = addition_significance(_result())
    rows = _rows(table)
    assert rows["TA"][0] == acc_cell("1" * 80 + "0" * 20) == "0.800 [0.711, 0.867]"
    assert rows["TA"][-1] == "(reference)"
    # TIES loses 30 news examples TA gets right and wins none: McNemar p = 2 / 2**30, far below 0.05
    assert rows["TIES"][-1].startswith("-0.150 [") and rows["TIES"][-1].endswith("*")
    assert not rows["DARE-TIES"][-1].endswith("*")
    assert "TIES vs TA (seed 0): significantly worse" in claims[0]
    assert any("DARE-TIES vs TA (seed 0): no significant difference" in c for c in claims)
    assert any(c.startswith("- Interference") for c in claims)


def test_negation_and_missing_scores():
    neg = _rows(negation_significance(_result()))
    assert neg["news"][2] == "0.250 [0.175, 0.343]" and float(neg["news"][-1]) < 0.05
    old = _result()
    old["addition"]["methods"]["task_arithmetic"]["correct"] = {}
    assert addition_significance(old)[0] == "(no per-example scores in this result)"
    assert significance_section([_result()])[0].startswith("## 1b.")


def test_compare_refuses_vectors_of_other_test_sets():
    assert compare({"a": "10"}, {"a": "101"}, ["a"]) is None
    assert compare({"a": "1100"}, {"a": "1100"}, ["a"])["p"] == pytest.approx(1.0)
