"""benchmarks/stage_times.py reads a pipeline run's step timings back from a real MLflow store: the
latest finished ``pipeline:`` run's nested calls, summed per step (fine-tune per mode, evaluate per
split) in the stage table's order; registration and other runs' calls are left out."""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import stage_times  # noqa: E402


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
    run = stage_times.recorded(uri)
    assert run.pipeline_seconds == 4.0
    assert len(run.calls) == 7
    rows = stage_times.stage_rows(run)
    assert list(rows) == ["prepare-data", "fine-tune[talos]", "fine-tune[full]", "merge", "evaluate[validation]",
                          "evaluate[test]"]
    assert rows["fine-tune[full]"] == {"calls": 2, "seconds": 5.0}
    assert rows["merge"] == {"calls": 1, "seconds": 0.25}


def test_worker_counts_compare_spans_and_wall_times_first_over_last(tmp_path: Path) -> None:
    """Per stage the span from its first call's start to its last call's end (what running calls
    together shortens), median over a count's runs; the last column is first count ÷ last count."""
    def run(start: float, step: float, process: float) -> stage_times.Recorded:
        calls = [stage_times.Call("fine-tune", "fine-tune", f"t{i}-full", start + step * i, start + step * i + 2, 2.0)
                 for i in range(3)]
        return stage_times.Recorded(pipeline_seconds=10 * step, calls=calls, process_seconds=process)

    one = stage_times.summary([run(0, 2, 30.0), run(100, 2, 40.0), run(200, 3, 50.0)])
    four = stage_times.summary([run(0, 0, 20.0)])
    assert one["spans"] == {"fine-tune": {"calls": 3, "span": 6.0}}  # median of spans 6, 6, 8
    assert one["stages"] == {"fine-tune[full]": {"calls": 3, "seconds": 6.0}}
    assert (one["pipeline_seconds"], one["process_seconds"]) == (20.0, 40.0)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in
            stage_times.workers_table({1: one, 4: four}).splitlines()[2:]}
    assert [c.strip() for c in rows["fine-tune"]] == ["3", "6.0", "2.0", "3.00"]
    assert [c.strip() for c in rows["pipeline flow"]] == ["", "20.0", "0.0", "–"]  # no ratio to a zero
    assert [c.strip() for c in rows["`mergeline run` (process)"]] == ["", "40.0", "20.0", "2.00"]
