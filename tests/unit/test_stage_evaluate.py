"""Which sets each model is scored on, and the rows derived from the scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergeline.params import load_params
from mergeline.stages.common import StageContext
from mergeline.stages.evaluate import evaluate_experiment, evaluation_sets, select_best, summarize

PARAMS = Path(__file__).resolve().parents[2] / "params" / "default.yaml"


def context(*overrides: str) -> StageContext:
    params = load_params(str(PARAMS), ["tasks=[news,sentiment]", "control=control", *overrides])
    return StageContext(params)


def test_every_set_by_default() -> None:
    ctx = context("evaluate.singles=all", "evaluate.validation_control=true")
    every = ["news", "sentiment", "control"]
    assert evaluation_sets(ctx, "base", "validation") == every
    assert evaluation_sets(ctx, "single", "test", "news") == every
    assert evaluation_sets(ctx, "variant", "validation") == every
    assert evaluation_sets(ctx, "variant", "test") == every


def test_reduced_sets_keep_what_the_numbers_need() -> None:
    ctx = context("evaluate.singles=own", "evaluate.validation_control=false")
    assert evaluation_sets(ctx, "base", "validation") == ["news", "sentiment", "control"]
    assert evaluation_sets(ctx, "single", "validation", "sentiment") == ["sentiment"]
    assert evaluation_sets(ctx, "variant", "validation") == ["news", "sentiment"]
    assert evaluation_sets(ctx, "variant", "test") == ["news", "sentiment", "control"]
    with pytest.raises(ValueError):
        evaluation_sets(ctx, "single", "test")


def test_summarize_normalizes_by_each_single_and_skips_a_missing_control() -> None:
    ctx = context()
    base = {"metrics": {"news": 0.5, "sentiment": 0.25, "control": 0.75}}
    singles = {"news": {"metrics": {"news": 0.8}}, "sentiment": {"metrics": {"sentiment": 0.5}}}
    row = summarize(ctx, {"metrics": {"news": 0.6, "sentiment": 0.5, "control": 0.5}}, base, singles)
    assert row["norm_acc/news"] == pytest.approx(0.75)
    assert row["norm_acc/sentiment"] == pytest.approx(1.0)
    assert row["norm_acc/mean"] == pytest.approx(0.875)
    assert row["acc/mean"] == pytest.approx(0.55)
    assert row["control_drift"] == pytest.approx(-0.25)
    without = summarize(ctx, {"metrics": {"news": 0.6, "sentiment": 0.5}}, base, singles)
    assert "control_drift" not in without and without["norm_acc/mean"] == pytest.approx(0.875)
    unnormalized = summarize(ctx, {"metrics": {"news": 0.6, "sentiment": 0.5}}, base, None)
    assert "norm_acc/mean" not in unnormalized and unnormalized["acc/mean"] == pytest.approx(0.55)


def test_select_best_prefers_higher_norm_then_smaller_lambda() -> None:
    rows = {"ta_a": {"norm_acc/mean": 0.9}, "ta_b": {"norm_acc/mean": 0.9}, "ties_a": {"norm_acc/mean": 0.95}}
    variants = {"ta_a": {"method": "task_arithmetic", "lambda": 1.0},
                "ta_b": {"method": "task_arithmetic", "lambda": 0.5},
                "ties_a": {"method": "ties", "lambda": 1.0}}
    chosen = select_best(rows, variants)
    assert chosen["best_per_method"] == {"task_arithmetic": "ta_b", "ties": "ties_a"}
    assert chosen["ranking"] == ["ties_a", "ta_b"]
    rows["ta_a"]["acc/mean"], rows["ta_b"]["acc/mean"], rows["ties_a"]["acc/mean"] = 0.7, 0.6, 0.5
    by_acc = select_best(rows, variants, by="acc/mean")
    assert by_acc["ranking"] == ["ta_a", "ties_a"] and by_acc["by"] == "acc/mean"


def test_evaluation_plan_scores_singles_on_test_only_when_selecting_by_accuracy() -> None:
    calls: list[tuple[str, str, tuple[str, ...]]] = []
    accuracy = {"base": 0.25, "single-news-full": 0.75, "single-sentiment-full": 0.5, "ta_a": 0.5, "ta_b": 0.75}

    def ev(name: str, model: dict, split: str, sets: list[str]) -> dict:
        calls.append((name, split, tuple(sets)))
        return {"metrics": {s: accuracy[name] for s in sets}}

    ctx = context("evaluate.singles=own", "evaluate.validation_control=false", "evaluate.select_by=acc/mean")
    checkpoints = {"news:full": {"task": "news"}, "sentiment:full": {"task": "sentiment"}}
    variants = {"ta_a": {"method": "task_arithmetic", "lambda": 1.0},
                "ta_b": {"method": "task_arithmetic", "lambda": 0.5}}
    out = evaluate_experiment(ctx, {}, checkpoints, {"ta_a": {}, "ta_b": {}}, variants, ev)
    assert ("single-news-full", "test", ("news",)) in calls
    assert not any(name.startswith("single") and split == "validation" for name, split, _ in calls)
    assert ("ta_a", "validation", ("news", "sentiment")) in calls
    assert out["selection"]["ranking"] == ["ta_b"]
    assert [c for c in calls if c[1] == "test" and c[0].startswith("ta")] == [("ta_b", "test", ("news", "sentiment", "control"))]
    row = out["test_rows"]["ta_b"]
    assert row["norm_acc/news"] == pytest.approx(1.0) and row["norm_acc/sentiment"] == pytest.approx(1.5)
    assert row["control_drift"] == pytest.approx(0.5)
    assert "norm_acc/mean" not in out["validation_rows"]["ta_a"]


def test_talos_fine_tune_takes_its_own_learning_rate() -> None:
    from mergeline.stages.train import finetune_settings

    ctx = context("finetune.lr=0.0001", "talos.lr=0.002")
    assert finetune_settings(ctx, "full")["lr"] == pytest.approx(1e-4)
    assert finetune_settings(ctx, "talos")["lr"] == pytest.approx(2e-3)
    assert finetune_settings(context("finetune.lr=0.0001", "talos.lr=null"), "talos")["lr"] == pytest.approx(1e-4)
