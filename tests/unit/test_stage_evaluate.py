"""Which sets each model is scored on, and the rows derived from the scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergeline.params import load_params
from mergeline.pipeline.records import BaseRecord, Checkpoint, Evaluation, Fit, Merged, Variant
from mergeline.stages.common import StageContext
from mergeline.stages.evaluate import Scoring, evaluate_experiment, evaluation_sets, select_best, summarize

PARAMS = Path(__file__).resolve().parents[2] / "params" / "default.yaml"


def context(*overrides: str) -> StageContext:
    params = load_params(str(PARAMS), ["tasks=[news,sentiment]", "control=control", *overrides])
    return StageContext(params)


def scored(metrics: dict[str, float], name: str = "m", split: str = "test") -> Evaluation:
    return Evaluation(name=name, split=split, metrics=metrics)


def variant(name: str, lam: float, method: str = "task_arithmetic") -> Variant:
    return Variant(name=name, method=method, lam=lam, density=None)


def test_every_set_by_default() -> None:
    ctx = context("evaluate.singles=all", "evaluate.validation_control=true")
    every = ("news", "sentiment", "control")
    assert evaluation_sets(ctx, "base", "validation") == every
    assert evaluation_sets(ctx, "single", "test", "news") == every
    assert evaluation_sets(ctx, "variant", "validation") == every
    assert evaluation_sets(ctx, "variant", "test") == every


def test_reduced_sets_keep_what_the_numbers_need() -> None:
    ctx = context("evaluate.singles=own", "evaluate.validation_control=false")
    assert evaluation_sets(ctx, "base", "validation") == ("news", "sentiment", "control")
    assert evaluation_sets(ctx, "single", "validation", "sentiment") == ("sentiment",)
    assert evaluation_sets(ctx, "variant", "validation") == ("news", "sentiment")
    assert evaluation_sets(ctx, "variant", "test") == ("news", "sentiment", "control")
    with pytest.raises(ValueError):
        evaluation_sets(ctx, "single", "test")


def test_summarize_normalizes_by_each_single_and_skips_a_missing_control() -> None:
    ctx = context()
    base = scored({"news": 0.5, "sentiment": 0.25, "control": 0.75})
    singles = {"news": scored({"news": 0.8}), "sentiment": scored({"sentiment": 0.5})}
    row = summarize(ctx, scored({"news": 0.6, "sentiment": 0.5, "control": 0.5}), base, singles)
    assert row["norm_acc/news"] == pytest.approx(0.75)
    assert row["norm_acc/sentiment"] == pytest.approx(1.0)
    assert row["norm_acc/mean"] == pytest.approx(0.875)
    assert row["acc/mean"] == pytest.approx(0.55)
    assert row["control_drift"] == pytest.approx(-0.25)
    without = summarize(ctx, scored({"news": 0.6, "sentiment": 0.5}), base, singles)
    assert "control_drift" not in without and without["norm_acc/mean"] == pytest.approx(0.875)
    unnormalized = summarize(ctx, scored({"news": 0.6, "sentiment": 0.5}), base, None)
    assert "norm_acc/mean" not in unnormalized and unnormalized["acc/mean"] == pytest.approx(0.55)


def test_select_best_prefers_higher_norm_then_smaller_lambda() -> None:
    rows = {"ta_a": {"norm_acc/mean": 0.9}, "ta_b": {"norm_acc/mean": 0.9}, "ties_a": {"norm_acc/mean": 0.95}}
    variants = {"ta_a": variant("ta_a", 1.0), "ta_b": variant("ta_b", 0.5), "ties_a": variant("ties_a", 1.0, "ties")}
    chosen = select_best(rows, variants)
    assert chosen.best_per_method == {"task_arithmetic": "ta_b", "ties": "ties_a"}
    assert chosen.ranking == ("ties_a", "ta_b")
    rows["ta_a"]["acc/mean"], rows["ta_b"]["acc/mean"], rows["ties_a"]["acc/mean"] = 0.7, 0.6, 0.5
    by_acc = select_best(rows, variants, by="acc/mean")
    assert by_acc.ranking == ("ta_a", "ties_a") and by_acc.by == "acc/mean"


def test_evaluation_plan_scores_singles_on_test_only_when_selecting_by_accuracy() -> None:
    calls: list[tuple[str, str, tuple[str, ...]]] = []
    accuracy = {"base": 0.25, "single-news-full": 0.75, "single-sentiment-full": 0.5, "ta_a": 0.5, "ta_b": 0.75}

    rounds: list[int] = []

    def score(requests: list[Scoring]) -> list[Evaluation]:
        rounds.append(len(requests))
        calls.extend((r.name, r.split, r.sets) for r in requests)
        return [scored({s: accuracy[r.name] for s in r.sets}, r.name, r.split) for r in requests]

    ctx = context("evaluate.singles=own", "evaluate.validation_control=false", "evaluate.select_by=acc/mean")
    checkpoints = {Fit(t, "full"): Checkpoint(task=t, mode="full", path=f"checkpoints/{t}", sha256="")
                   for t in ("news", "sentiment")}
    merged = {name: Merged(variant=variant(name, lam), config={}, path=f"merged/{name}", weights={})
              for name, lam in (("ta_a", 1.0), ("ta_b", 0.5))}
    out = evaluate_experiment(ctx, BaseRecord(id="b", path="base", sha256=""), checkpoints, merged, score)
    # two rounds, each submitted at once: base, singles and every variant on validation; then the best on test
    assert rounds == [6, 1]
    assert ("single-news-full", "test", ("news",)) in calls
    assert not any(name.startswith("single") and split == "validation" for name, split, _ in calls)
    assert ("ta_a", "validation", ("news", "sentiment")) in calls
    assert out.selection.ranking == ("ta_b",)
    assert [c for c in calls if c[1] == "test" and c[0].startswith("ta")] == [("ta_b", "test", ("news", "sentiment", "control"))]
    row = out.test_rows["ta_b"]
    assert row["norm_acc/news"] == pytest.approx(1.0) and row["norm_acc/sentiment"] == pytest.approx(1.5)
    assert row["control_drift"] == pytest.approx(0.5)
    assert "norm_acc/mean" not in out.validation_rows["ta_a"]


def test_a_given_model_standing_for_every_mode_is_scored_once() -> None:
    ctx = context("evaluate.singles=own", "evaluate.select_by=acc/mean")
    given = Checkpoint(task="news", mode="full", path="models/news", sha256="", source="checkpoint")
    checkpoints = {Fit("news", "full"): given, Fit("news", "talos"): given,
                   Fit("sentiment", "full"): Checkpoint(task="sentiment", mode="full", path="c/s", sha256="")}
    seen: list[str] = []

    def score(requests: list[Scoring]) -> list[Evaluation]:
        seen.extend(r.name for r in requests)
        return [scored({s: 0.5 for s in r.sets}, r.name, r.split) for r in requests]

    out = evaluate_experiment(ctx, BaseRecord(id="b", path="base", sha256=""), checkpoints, {}, score)
    assert seen.count("single-news-full") == 1 and "single-news-talos" not in seen
    assert out.reference["single-news-talos"] == out.reference["single-news-full"]


def test_talos_fine_tune_takes_its_own_learning_rate() -> None:
    from mergeline.stages.train import finetune_settings

    ctx = context("finetune.lr=0.0001", "talos.lr=0.002")
    assert finetune_settings(ctx, "full")["lr"] == pytest.approx(1e-4)
    assert finetune_settings(ctx, "talos")["lr"] == pytest.approx(2e-3)
    assert finetune_settings(context("finetune.lr=0.0001", "talos.lr=null"), "talos")["lr"] == pytest.approx(1e-4)
