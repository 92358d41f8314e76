"""Negation and analogy as a run of the pipeline: ``mergeline run`` on a tiny Llama with real Prefect
(embedded), MLflow (SQLite) and lm-eval, then ``mergeline report`` over the run.

The four tweet-domain tasks make the analogy continue-air : continue-other :: sentiment-air :
sentiment-other; sentiment-air is also negated. A random model's accuracies mean nothing, so the
test checks what the pipeline recorded against the rules applied to its own recorded points.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.pipeline_project import make_project, run_cli, shared_tiny_base

pytestmark = pytest.mark.slow

TASKS = ["continue-air", "continue-other", "sentiment-air", "sentiment-other"]
EDITS = {
    "experiment": "mergeline-edits",
    "tasks": TASKS,
    "data": {"n_train": 8, "n_validation": 8, "n_test": 8, "seed": 0},
    "talos": {"enabled": False},
    "merge": {"seed": 0, "methods": {"task_arithmetic": {"lambdas": [1.0]}}},
    "negation": {"tasks": ["sentiment-air"], "methods": {"task_arithmetic": {"lambdas": [0.5, 1.0, 2.0]}}},
    "analogy": {"a": "continue-air", "b": "continue-other", "c": "sentiment-air", "d": "sentiment-other",
                "lambdas": [0.5, 1.0], "mus": [1.0]},
    "registry": {"model_name": "mergeline-edits", "candidates": 0},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = make_project(tmp_path_factory.mktemp("edits") / "project", shared_tiny_base(), **EDITS)
    result = run_cli(root, "run", "--params", "params.yaml", env={"MERGELINE_MAX_WORKERS": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result.stdout


def test_negation_s_lambda_is_the_control_rule_applied_to_the_recorded_validation_points(
        project: tuple[Path, str]) -> None:
    root, stdout = project
    metrics = json.loads((root / "data/work/eval/details.json").read_text())
    (negation,) = [e for e in metrics["edits"] if e["edit"] == "negation"]
    assert (negation["task"], negation["method"]) == ("sentiment-air", "task_arithmetic")
    points = negation["points"]
    assert sorted(p["lambda"] for p in points) == [0.5, 1.0, 2.0]
    floor = 0.95 * metrics["base"]["validation"]["control"]
    qualifying = [p for p in points if p["control"] >= floor]
    expected = (min(qualifying, key=lambda p: (p["target"], p["lambda"])) if qualifying
                else min(points, key=lambda p: p["lambda"]))
    assert negation["variant"] == expected["variant"] and negation["rule_met"] == bool(qualifying)
    assert set(negation["test"]) == {"target", "control"} and set(negation["correct"]) == {"sentiment-air", "control"}
    assert len(negation["correct"]["sentiment-air"]) == 8
    # the negated variant merged the target's vector alone, at weight −1
    merged = json.loads((root / "data/work/merged.json").read_text())
    (model,) = merged[negation["variant"]]["config"]["models"]
    assert model["model"].endswith("vectors/sentiment-air") and model["parameters"]["weight"] == -1.0
    rule = "met" if negation["rule_met"] else "unmet"
    chosen = next(p for p in points if p["variant"] == negation["variant"])
    assert f"| negation | sentiment-air | task_arithmetic | λ={chosen['lambda']:g} | " \
           f"{negation['test']['target']:.3f} |" in stdout and f"| {rule} |" in stdout, stdout[-3000:]


def test_analogy_settings_are_scored_on_d_and_logged_to_the_parent_run(project: tuple[Path, str]) -> None:
    root, _ = project
    metrics = json.loads((root / "data/work/eval/details.json").read_text())
    assert set(json.loads((root / "data/work/eval/metrics.json").read_text())) == {"champion", "test", "validation"}
    analogy = {e["edit"]: e for e in metrics["edits"] if e["edit"] != "negation"}
    assert sorted(analogy) == ["analogy", "oracle", "transfer"]
    for edit in analogy.values():
        assert edit["task"] == "sentiment-other" and len(edit["points"]) == 2
        best = max(p["target"] for p in edit["points"])
        chosen = next(p for p in edit["points"] if p["variant"] == edit["variant"])
        assert chosen["target"] == best and (chosen["lambda"] == 0.5 or all(
            p["target"] < best for p in edit["points"] if p["lambda"] == 0.5))
    assert analogy["analogy"]["points"][0]["mu"] == 1.0
    merged = json.loads((root / "data/work/merged.json").read_text())
    weights = {m["model"].rsplit("/", 1)[-1]: m["parameters"]["weight"]
               for m in merged[analogy["analogy"]["variant"]]["config"]["models"]}
    assert weights == {"sentiment-air": 1.0, "continue-other": 1.0, "continue-air": -1.0}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name("mergeline-edits").experiment_id],
                                   "tags.mlflow.runName = 'pipeline:mergeline-edits'")
    logged = parent.data.metrics
    negation = next(e for e in metrics["edits"] if e["edit"] == "negation")
    assert logged["negation/sentiment-air/task_arithmetic/target"] == negation["test"]["target"]
    assert logged["oracle/sentiment-other/task_arithmetic/target"] == analogy["oracle"]["test"]["target"]


def test_report_reads_the_edits_back_from_mlflow(project: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = project
    result = run_cli(root, "report", "mergeline-edits", "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| negation |", "| analogy |"))]
    assert [row.split(" | ")[1:4] for row in rows] == [["sentiment-air", "task_arithmetic", "1"],
                                                       ["sentiment-other", "task_arithmetic", "1"]]
    # paired on the same test examples: the negation against the base on sentiment-air (8 examples, one run)
    paired = next(line for line in result.stdout.splitlines()
                  if line.startswith("| task_arithmetic negation forgets sentiment-air |"))
    assert paired.split(" | ")[1:3] == ["8", "1"]
