"""Negation and analogy in the pipeline (mergeline/pipeline/edits.py): the variants the merge plan emits,
their merge configs, and the rules that choose the point scored on test, on hand-made numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergeline.errors import MergelineError
from mergeline.params import load_params
from mergeline.pipeline.edits import choose_edits, pick_best, pick_negation, with_test
from mergeline.pipeline.records import BaseRecord, EditPoint, Evaluation, Fit, Importance, Vector
from mergeline.stages.common import StageContext
from mergeline.stages.merge import absolute_config, merge_config, plan_variants

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "params" / "tiny.yaml"
FOUR = "tasks=[news, sentiment, code, docstring]"


def _point(name: str, lam: float, target: float, control: float | None) -> EditPoint:
    return EditPoint(variant=name, lam=lam, density=None, target=target, control=control)


def test_negation_takes_the_lowest_target_among_points_that_keep_the_control() -> None:
    # base control 0.80, ratio 0.95: the floor is 0.76
    points = [_point("a", 0.25, 0.60, 0.80), _point("b", 0.5, 0.40, 0.77), _point("c", 1.0, 0.10, 0.70)]
    chosen, met = pick_negation(points, 0.95 * 0.80)
    assert (chosen.variant, met) == ("b", True)  # c forgets more but loses the control set


def test_negation_ties_go_to_the_smaller_lambda_and_an_unmet_rule_keeps_the_smallest() -> None:
    tied = [_point("l1", 1.0, 0.30, 0.9), _point("l05", -0.5, 0.30, 0.9), _point("l2", 2.0, 0.50, 0.9)]
    assert pick_negation(tied, 0.5) == (tied[1], True)
    unmet = [_point("l1", 1.0, 0.1, 0.2), _point("l025", 0.25, 0.5, 0.3), _point("l05", 0.5, 0.3, None)]
    assert pick_negation(unmet, 0.76) == (unmet[1], False)


def test_analogy_takes_the_best_target_with_ties_to_the_smaller_lambda_then_mu() -> None:
    points = [EditPoint(variant="x", lam=1.0, density=None, target=0.7, control=0.5, mu=0.5),
              EditPoint(variant="y", lam=0.5, density=None, target=0.7, control=0.5, mu=1.0),
              EditPoint(variant="z", lam=0.5, density=None, target=0.7, control=0.5, mu=0.5),
              EditPoint(variant="w", lam=0.25, density=None, target=0.6, control=0.9, mu=0.5)]
    assert pick_best(points).variant == "z"


def _ctx(tmp_path: Path, *overrides: str) -> StageContext:
    return StageContext(load_params(TINY, ["talos.enabled=false", "merge.methods={task_arithmetic: {lambdas: [1.0]}}",
                                           *overrides]), tmp_path, "cpu")


def test_merge_plan_emits_negation_and_analogy_variants_after_the_addition_sweep(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, FOUR, "negation.tasks=[news, code]",
               "negation.methods={task_arithmetic: {lambdas: [0.5, 1.0]}, sta: {lambdas: [1.0], densities: [0.1, 0.3]}}",
               "analogy={a: code, b: docstring, c: news, d: sentiment, lambdas: [0.5, 1.0], mus: [1.0, 2.0]}")
    variants = plan_variants(ctx)
    assert [v.name for v in variants if v.edit == "addition"] == ["ta_l1"]
    negation = [v for v in variants if v.edit == "negation"]
    assert [v.name for v in negation] == ["neg-news-ta_l0.5", "neg-news-ta_l1", "neg-news-sta_l1_d0.1",
                                          "neg-news-sta_l1_d0.3", "neg-code-ta_l0.5", "neg-code-ta_l1",
                                          "neg-code-sta_l1_d0.1", "neg-code-sta_l1_d0.3"]
    assert all(v.weights == {v.target: -1.0} for v in negation)
    analogy = {v.name: v for v in variants if v.edit in ("transfer", "analogy", "oracle")}
    assert sorted(analogy) == ["analogy-ta_l0.5_mu1", "analogy-ta_l0.5_mu2", "analogy-ta_l1_mu1", "analogy-ta_l1_mu2",
                               "oracle-ta_l0.5", "oracle-ta_l1", "transfer-ta_l0.5", "transfer-ta_l1"]
    assert analogy["analogy-ta_l1_mu2"].weights == {"news": 1.0, "docstring": 2.0, "code": -2.0}
    assert analogy["oracle-ta_l1"].weights == {"sentiment": 1.0} and {v.target for v in analogy.values()} == {
        "sentiment"}
    assert ctx.params.variant_count() == len(variants) == 1 + 8 + 8
    assert ctx.params.importance_needed  # sta negation needs the importance stage


def test_a_negation_config_merges_the_target_s_vector_alone_at_weight_minus_one(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "negation.tasks=[news]",
               "negation.methods={sta: {lambdas: [0.5], densities: [0.2]}}")
    (variant,) = [v for v in plan_variants(ctx) if v.edit == "negation"]
    vectors = {Fit(t, "full"): Vector(task=t, mode="full", path=f"v/{t}", sha256="s") for t in ("news", "sentiment")}
    importance = {t: Importance(task=t, kind="sta", plot="", path=f"i/{t}.safetensors", sha256="s")
                  for t in ("news", "sentiment")}
    config = merge_config(ctx, variant, BaseRecord(id="b", path="base", sha256="s"), vectors, importance)
    assert config["merge_method"] == "sta" and config["parameters"]["lambda"] == 0.5
    assert config["models"] == [{"model": "v/news", "parameters": {"weight": -1.0, "density": 0.2,
                                                                   "importance": "i/news.safetensors"}}]


def test_choose_edits_groups_by_task_and_method_and_reads_the_base_control() -> None:
    ctx_params = load_params(TINY, ["negation.tasks=[news]",
                                    "negation.methods={task_arithmetic: {lambdas: [0.5, 1.0]}, talos: {}}"])
    variants = {v.name: v for v in plan_variants(StageContext(ctx_params, Path("."), "cpu")) if v.edit == "negation"}
    acc = {"neg-news-ta_l0.5": (0.5, 0.9), "neg-news-ta_l1": (0.2, 0.6), "neg-news-talos_l1": (0.3, 0.85)}
    validation = {n: Evaluation(name=n, split="validation", metrics={"news": t, "control": c}) for n, (t, c) in
                  acc.items()}
    base = Evaluation(name="base", split="validation", metrics={"news": 0.7, "control": 0.9})
    choices = {c.method: c for c in choose_edits(variants, validation, base, "control", 0.95)}
    assert choices["task_arithmetic"].variant == "neg-news-ta_l0.5" and choices["task_arithmetic"].rule_met
    assert (choices["talos"].variant, choices["talos"].rule_met) == ("neg-news-talos_l1", False)  # 0.85 < 0.855
    test = Evaluation(name="x", split="test", metrics={"news": 0.25, "control": 0.8},
                      raw={"news": {"correct": "0100"}, "control": {"correct": "1111"}})
    scored = with_test(choices["talos"], test, "control")
    assert scored.test == {"target": 0.25, "control": 0.8} and scored.correct == {"news": "0100", "control": "1111"}
    assert scored.chosen.lam == 1.0


@pytest.mark.parametrize("override, fragment", [
    ("negation={tasks: [code]}", "negation.tasks: 'code' is not one of tasks"),
    ("negation={tasks: [news], methods: {metagpt: {}}}", "metagpt takes no per-model weight"),
    ("negation={tasks: [news], methods: {talos: {}}}", "needs talos.enabled: true"),
    ("negation={tasks: [news], methods: {task_arithmetic: {lambdas: [4.0]}}}", "out of range"),
    ("negation={tasks: [news], control_ratio: 1.5}", "control_ratio"),
    ("analogy={a: news, b: news, c: news, d: sentiment}", "four different tasks"),
    ("analogy={a: news, b: sentiment, c: code, d: docstring}", "analogy.c: 'code' is not one of tasks"),
])
def test_bad_edit_params_fail_with_one_line_naming_the_key(override: str, fragment: str) -> None:
    with pytest.raises(MergelineError, match=fragment) as error:
        load_params(TINY, ["talos.enabled=false", "merge.methods={task_arithmetic: {}}", override])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "params").glob("*.yaml") if "encoder" not in p.name))
def test_every_pipeline_params_file_validates(path: str) -> None:
    # the encoder family's files are its script's own (benchmarks/quality_encoder.py), not pipeline params
    params = load_params(REPO / "params" / path)
    assert params.variant_count() >= len(params.merge.methods)


@pytest.mark.parametrize("args, fragment", [
    (["params/quality-tiny.yaml", "--seeds", "0", "0"], "--seeds: expected distinct"),
    (["params/quality-tiny.yaml", "--seed-keys", "finetune.nope"], "finetune.nope"),
    (["params/no-such.yaml"], "no-such.yaml"),
])
def test_the_quality_script_refuses_bad_input_in_one_line_before_anything_runs(
        args: list[str], fragment: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), *args, "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and fragment in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_lata_forgetting_is_a_negation_with_the_pretrained_model_resolved_against_the_project(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "negation.tasks=[sentiment]",
               "negation.methods={lata: {lambdas: [1.0], options: {pretrained_model: models/pre, delta: median}}}")
    (variant,) = [v for v in plan_variants(ctx) if v.edit == "negation"]
    vectors = {Fit(t, "full"): Vector(task=t, mode="full", path=f"v/{t}", sha256="s") for t in ("news", "sentiment")}
    config = merge_config(ctx, variant, BaseRecord(id="b", path="inst", sha256="s"), vectors, {})
    assert config["models"] == [{"model": "v/sentiment", "parameters": {"weight": -1.0}}]
    assert config["parameters"] == {"pretrained_model": "models/pre", "delta": "median", "lambda": 1.0}
    fixed = absolute_config(config, ctx)  # what the merge runs on; the recorded config stays root-relative
    assert fixed["parameters"]["pretrained_model"] == str(tmp_path / "models/pre")
    assert fixed["base_model"] == str(tmp_path / "inst") and config["parameters"]["pretrained_model"] == "models/pre"
