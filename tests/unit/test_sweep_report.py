"""``mergeline report``: tables and plots over an experiment's pipeline runs, read from MLflow.

The store is a real SQLite MLflow store holding runs laid out as ``mergeline run`` lays them out: a
parent run ``pipeline:<experiment>`` with the flattened params and ``eval/metrics.json``, nested
``merge:<variant>`` runs tagged ``mergeline.step=merge`` with the variant's method, λ and density.
(tests/integration/test_pipeline.py reports on a real run.)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mergeline.cli import main
from mergeline.pipeline.sweep_report import PipelineRun, group_runs
from mergeline.tracking.pipeline_runs import pipeline_runs

VARIANTS = {"ta_l0.5": ("task_arithmetic", 0.5, None), "ta_l1": ("task_arithmetic", 1.0, None),
            "ties_l1_d0.2": ("ties", 1.0, 0.2)}


def _pipeline_run(client: MlflowClient, experiment_id: str, folder: Path, params: dict[str, str],
                  test: dict[str, float], validation: dict[str, float], champion: str,
                  status: str = "FINISHED") -> None:
    """One parent run with ``eval/metrics.json``: test ``acc/mean`` per chosen variant, validation
    ``acc/mean`` per variant; its merge runs nested under it."""
    parent = client.create_run(experiment_id, run_name="pipeline:exp").info.run_id
    for key, value in params.items():
        client.log_param(parent, key, value)
    metrics = {"champion": champion,
               "test": {name: {"acc/mean": acc, "control_drift": -acc / 10} for name, acc in test.items()},
               "validation": {name: {"acc/mean": acc} for name, acc in validation.items()}}
    path = folder / parent / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    client.log_artifact(parent, str(path), "eval")
    for name, (method, lam, density) in VARIANTS.items():
        child = client.create_run(experiment_id, run_name=f"merge:{name}",
                                  tags={"mlflow.parentRunId": parent, "mergeline.step": "merge"}).info.run_id
        for key, value in {"method": method, "lambda": lam, "density": density}.items():
            client.log_param(child, key, str(value))
        client.set_terminated(child)
    client.set_terminated(parent, status)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (creating an MLflow schema takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    base = {"experiment": "exp", "evaluate.select_by": "acc/mean", "finetune.lr": "0.0001"}
    for seed, (ta, ties) in enumerate([(0.70, 0.60), (0.74, 0.66), (0.72, 0.68)]):
        _pipeline_run(client, experiment, tmp_path / "staged", {**base, "finetune.seed": str(seed), "data.seed": str(seed)},
                      {"ta_l0.5" if seed else "ta_l1": ta, "ties_l1_d0.2": ties},
                      {"ta_l0.5": 0.5 + seed / 10, "ta_l1": 0.6, "ties_l1_d0.2": 0.4}, "ta_l1" if seed == 0 else "ta_l0.5")
    _pipeline_run(client, experiment, tmp_path / "staged", {**base, "finetune.lr": "5e-05", "finetune.seed": "0"},
                  {"ta_l1": 0.5}, {"ta_l1": 0.45}, "ta_l1")
    _pipeline_run(client, experiment, tmp_path / "staged", {**base, "finetune.lr": "1", "finetune.seed": "0"},
                  {"ta_l1": 0.0}, {"ta_l1": 0.0}, "ta_l1", status="FAILED")  # stopped runs are left out
    mlflow.set_tracking_uri(None)
    return uri


def test_report_groups_seeds_and_grid_points(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["report", "exp", "--out", str(out), "--tracking-uri", store]) == 0
    text = (out / "report.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    assert "# exp: 4 pipeline runs" in text and "finetune.lr=1 " not in text
    lr4, lr5 = text.split("### ")[1:]
    assert lr4.startswith("finetune.lr=0.0001 (3 runs)") and lr5.startswith("finetune.lr=5e-05 (1 run)")
    ta = next(line for line in lr4.splitlines() if line.startswith("| task_arithmetic |"))
    mean, sd = statistics.mean([0.70, 0.74, 0.72]), statistics.stdev([0.70, 0.74, 0.72])
    assert ta.split(" | ")[1:5] == ["3", "1, 0.5, 0.5", f"{mean:.3f} ± {sd:.3f}", "–"]
    assert ta.endswith("| 3 of 3 |")
    ties = next(line for line in lr4.splitlines() if line.startswith("| ties |"))
    assert f"{statistics.mean([0.60, 0.66, 0.68]):.3f} ± " in ties and ties.endswith("| 0 of 3 |")
    assert "| task_arithmetic | 1 | 1 | 0.500 | – | -0.050 | 1 of 1 |" in lr5
    assert (out / "sweep-1.png").stat().st_size > 0 and (out / "sweep-2.png").is_file()
    record = json.loads((out / "report.json").read_text())
    assert [len(g["runs"]) for g in record["groups"]] == [3, 1]
    assert record["variants"]["ties_l1_d0.2"] == {"method": "ties", "lam": 1.0, "density": 0.2}


def test_a_run_repeated_with_the_same_params_counts_once_the_latest(tmp_path: Path) -> None:
    """A resumed sweep runs its finished seeds again (from the cache): the report must not count them twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    base = {"experiment": "exp", "evaluate.select_by": "acc/mean"}
    for seed, acc in [("0", 0.10), ("1", 0.74), ("0", 0.70)]:  # seed 0 twice, the later one counts
        _pipeline_run(client, experiment, tmp_path / f"staged{acc}", {**base, "finetune.seed": seed},
                      {"ta_l1": acc}, {"ta_l1": acc}, "ta_l1")
    runs, _ = pipeline_runs("exp", uri)
    mlflow.set_tracking_uri(None)
    assert [(run.params["finetune.seed"], run.test["ta_l1"]["acc/mean"]) for run in runs] == [("1", 0.74), ("0", 0.70)]


def test_grouping_ignores_every_seed_key_and_the_output_folders() -> None:
    def run(**params: str) -> PipelineRun:
        return PipelineRun("id", dict(params), {}, {}, None)

    groups = group_runs([run(**{"data.seed": "0", "merge.seed": "3", "x": "a", "work_dir": "w/sweep-1"}),
                         run(**{"data.seed": "1", "merge.seed": "4", "x": "a", "work_dir": "w/sweep-2",
                                "data_dir": "w/sweep-2/tasks"}), run(**{"data.seed": "0", "x": "b"})])
    assert [(g.setting, len(g.runs)) for g in groups] == [({"x": "a"}, 2), ({"x": "b"}, 1)]


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "experiment 'nope': not in the tracking store"),
    (["exp", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "mlflow.db"),
])
def test_missing_experiment_or_store_is_one_line(store: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 args: list[str], message: str) -> None:
    uri = ["--tracking-uri", store] if "--tracking-uri" not in args else []
    assert main(["report", *args, *uri, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "r").exists()


def test_user_folder_is_never_replaced(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("keep")
    assert main(["report", "exp", "--out", str(mine), "--tracking-uri", store, "--overwrite"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.md"]
    out = tmp_path / "report"
    assert main(["report", "exp", "--out", str(out), "--tracking-uri", store]) == 0
    assert main(["report", "exp", "--out", str(out), "--tracking-uri", store]) == 2  # exists: needs --overwrite
    assert main(["report", "exp", "--out", str(out), "--tracking-uri", store, "--overwrite"]) == 0


def test_edits_table_gives_each_negation_s_spread_over_seeds_and_how_often_the_rule_held() -> None:
    from mergeline.pipeline.records import EditChoice, EditPoint
    from mergeline.pipeline.sweep_report import Group, edits_table

    def run(seed: int, lam: float, target: float, control: float, met: bool) -> PipelineRun:
        point = EditPoint(variant=f"neg-news-ta_l{lam:g}", lam=lam, density=None, target=0.0, control=0.0)
        choice = EditChoice(edit="negation", task="news", method="task_arithmetic", variant=point.variant,
                            rule_met=met, points=(point,), test={"target": target, "control": control})
        return PipelineRun(str(seed), {"control": "control", "data.seed": str(seed)}, {}, {}, None, (choice,),
                           {"news": 0.8, "control": 0.5 + seed / 10})

    table = edits_table(Group({}, (run(0, 0.5, 0.2, 0.5, True), run(1, 1.0, 0.4, 0.6, False))))
    row = next(line for line in table.splitlines() if line.startswith("| negation |"))
    sd = statistics.stdev([0.2, 0.4])
    assert row == (f"| negation | news | task_arithmetic | 2 | 0.5, 1 | 0.300 ± {sd:.3f} | 0.800 ± 0.000 "
                   f"| 0.550 ± {statistics.stdev([0.5, 0.6]):.3f} | 0.550 ± {statistics.stdev([0.5, 0.6]):.3f} "
                   "| 1 of 2 |")
    assert edits_table(Group({}, (PipelineRun("x", {}, {}, {}, None),))) == ""
