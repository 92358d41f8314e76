"""benchmarks/stage_times.py reads a pipeline run's step timings back from a real MLflow store: the
latest finished ``pipeline:`` run's nested calls, summed per step (fine-tune per mode, evaluate per
split) in the stage table's order; registration and other runs' calls are left out."""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import stage_times  # noqa: E402
from _pipeline_runs import recorded  # noqa: E402


def _pipeline(client: MlflowClient, experiment: str, calls: list[tuple[str, str, str, float]], start: int) -> None:
    parent = client.create_run(experiment, run_name="pipeline:demo", start_time=start)
    for i, (stage, step, label, seconds) in enumerate(calls):
        tags = {"mlflow.parentRunId": parent.info.run_id, "mergeline.stage": stage}
        if step:
            tags["mergeline.step"] = step
        run = client.create_run(experiment, run_name=f"{step or stage}:{label}", start_time=start + 10 * i, tags=tags)
        client.log_metric(run.info.run_id, "stage_seconds", seconds)
        client.set_terminated(run.info.run_id, end_time=start + 10 * i + 5)
    client.set_terminated(parent.info.run_id, end_time=start + 4000)


def test_rows_are_the_latest_runs_calls_per_step_in_table_order(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    _pipeline(client, experiment, [("merge", "merge", "ta", 99.0)], start=1_000)  # an older run: left out
    _pipeline(client, experiment, [
        ("prepare-data", "prepare-data", "all", 1.5),
        ("fine-tune", "fine-tune", "news-talos", 4.0),
        ("fine-tune", "fine-tune", "news-full", 2.0),
        ("fine-tune", "fine-tune", "sentiment-full", 3.0),
        ("evaluate", "evaluate", "base-validation", 0.5),
        ("merge", "merge", "ta-l1", 0.25),  # started after the first evaluation: still the merge row first
        ("evaluate", "evaluate", "ta-l1-test", 0.75),
        ("register", "", "ta", 7.0),
    ], start=100_000)
    run = recorded(uri)
    assert run.pipeline_seconds == 4.0
    assert len(run.calls) == 7
    rows = stage_times.stage_rows(run)
    assert list(rows) == ["prepare-data", "fine-tune[talos]", "fine-tune[full]", "merge", "evaluate[validation]",
                          "evaluate[test]"]
    assert rows["fine-tune[full]"] == {"calls": 2, "seconds": 5.0}
    assert rows["merge"] == {"calls": 1, "seconds": 0.25}
