"""benchmarks/encoder_claims.py: the verdict rows logged as one MLflow run (metrics, seeds, table, plots)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from encoder_claims import NOTE_KEY, log_to_mlflow, metric_key, table  # noqa: E402

ROWS = [
    {"claim": "TA addition: θ0 + λΣτ is a multi-task model", "comparison": "TA − base", "n": 96, "seeds": 3,
     "diff": 0.086, "low": 0.074, "high": 0.098, "p": 1e-43, "verdict": "holds here", "note": ""},
    {"claim": "(TIES vs tuned TA)", "comparison": "TIES − TA", "n": 96, "seeds": 3,
     "diff": -0.002, "low": -0.005, "high": 0.004, "p": 0.7, "verdict": "does not hold here", "note": "x"},
]


def test_metric_key_keeps_only_mlflow_characters():
    assert metric_key("TA addition: θ0 + λΣτ is a multi-task model") == "TA_addition_0_is_a_multi-task_model"
    assert metric_key("(TIES vs tuned TA)") == "TIES_vs_tuned_TA"


def test_rows_plots_and_table_land_in_one_run(tmp_path):
    report = {"rows": ROWS}
    (tmp_path / "claims.json").write_text(json.dumps(report))
    (tmp_path / "claims_lambda.png").write_bytes(b"\x89PNG fake")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_to_mlflow(report, [{"seed": 0}, {"seed": 1}, {"seed": 2}],
                           [tmp_path / "claims.json", tmp_path / "claims_lambda.png"], uri)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "mergeline-claims"
    metrics = run.data.metrics
    assert metrics["TA_addition_0_is_a_multi-task_model/diff"] == 0.086
    assert metrics["TIES_vs_tuned_TA/low"] == -0.005
    assert metrics["TIES_vs_tuned_TA/p"] == 0.7
    assert len(metrics) == 8  # diff, low, high, p per row
    assert run.data.params["seeds"] == "[0, 1, 2]"
    assert run.data.tags[NOTE_KEY] == table(report)
    assert "| (TIES vs tuned TA) | TIES − TA | 96 | 3 | -0.002 [-0.005, +0.004] | 0.7 |" in table(report)
    logged = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"claims.json", "plots/claims_lambda.png"} <= logged


def test_an_unusable_store_is_one_line_before_any_work(tmp_path, capsys):
    from encoder_claims import main

    results = tmp_path / "res"
    results.mkdir()
    (results / "seed0.json").write_text("{}")  # never read further: the store is checked first
    assert main(["--results", str(results), "--out", str(tmp_path), "--tracking-uri", "ftp://host/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ftp://host/x: not an MLflow tracking URI" in err
    assert not (results / "claims.json").exists()
