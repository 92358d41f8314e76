"""The cleanup after a stopped run does the same work whatever the size of its sweep.

The supervisor runs it while the user waits for the stop (``mergeline.tracking.orphans``); it once
queried the store once per nested run, so a 2,000-variant sweep took minutes to stop. Counted here
as SQL statements against a real SQLite MLflow store (no timing): a sweep with five times the merge
runs costs exactly as many.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from mergeline.tracking.mlflow_setup import open_store
from mergeline.tracking.orphans import OWNER_TAG, close_owner_runs


def _stopped_sweep(folder: Path, merges: int) -> tuple[str, list[str]]:
    """A store holding a stopped run: its parent and one merge still RUNNING, ``merges`` merges done."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    open_store(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep")
    parent = client.create_run(experiment, tags={OWNER_TAG: "host:1:2"}, run_name="pipeline:sweep").info.run_id
    for index in range(merges):
        done = client.create_run(experiment, tags={"mlflow.parentRunId": parent}, run_name=f"merge:v{index}")
        client.set_terminated(done.info.run_id)
    running = client.create_run(experiment, tags={"mlflow.parentRunId": parent}, run_name="merge:last").info.run_id
    return uri, [parent, running]


def _statements(uri: str) -> tuple[int, list[str]]:
    count = [0]

    def counted(*_args: object) -> None:
        count[0] += 1

    event.listen(Engine, "before_cursor_execute", counted)
    try:
        closed = close_owner_runs("host:1:2", uri)
    finally:
        event.remove(Engine, "before_cursor_execute", counted)
    return count[0], closed.killed_runs


def test_cleanup_cost_does_not_grow_with_the_sweep(tmp_path: Path) -> None:
    small_uri, small_running = _stopped_sweep(tmp_path / "small", 4)
    large_uri, large_running = _stopped_sweep(tmp_path / "large", 20)
    small, small_killed = _statements(small_uri)
    large, large_killed = _statements(large_uri)
    assert sorted(small_killed) == sorted(small_running) and sorted(large_killed) == sorted(large_running)
    assert large == small, f"{small} statements for 4 merge runs, {large} for 20"
