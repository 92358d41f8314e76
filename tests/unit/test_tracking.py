"""configure_tracking and the logging helpers, on real MLflow with a temporary SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mergeline.errors import MergelineError
from mergeline.tracking import configure_tracking, log_artifacts, log_metrics, log_params
from mergeline.tracking.mlflow_setup import PARAM_VALUE_LIMIT, default_tracking_uri


def test_default_store_is_sqlite_in_cwd_with_mlartifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = configure_tracking(experiment="exp-a")
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" == default_tracking_uri()
    assert uri.startswith("sqlite:////")  # absolute path: four slashes
    assert (tmp_path / "mlflow.db").is_file()
    experiment = MlflowClient().get_experiment_by_name("exp-a")
    assert experiment.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    # The active experiment follows the store (G11): a run lands in exp-a of this database.
    with mlflow.start_run() as run:
        pass
    assert run.info.experiment_id == experiment.experiment_id


def test_env_uri_overrides_default_and_helpers_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}/m.db")
    assert configure_tracking(experiment="exp-b") == f"sqlite:///{other}/m.db"
    assert (other / "m.db").is_file() and not (tmp_path / "mlflow.db").exists()

    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "a.txt").write_text("a")
    with mlflow.start_run() as run:
        logged = log_params({"merge": {"method": "ties", "lambda": 0.4}, "long": "x" * 7000}, prefix="p")
        log_metrics({"task": {"acc": 0.5, "name": "skip-me"}, "flag": True}, step=3)
        log_artifacts(tmp_path / "art", "folder")
        log_artifacts(tmp_path / "art" / "a.txt")
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.params["p.merge.method"] == "ties" and data.params["p.merge.lambda"] == "0.4"
    assert len(data.params["p.long"]) == PARAM_VALUE_LIMIT and data.params["p.long"].endswith("[truncated]")
    assert logged["p.long"] == data.params["p.long"]
    assert data.metrics == {"task/acc": 0.5}  # strings and booleans are not metrics
    history = MlflowClient().get_metric_history(run.info.run_id, "task/acc")
    assert [m.step for m in history] == [3]
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert names == {"folder", "a.txt"}


def test_helpers_need_a_run(tmp_path: Path) -> None:
    configure_tracking(f"sqlite:///{tmp_path}/m.db", "exp-c")
    with pytest.raises(MergelineError, match="no active run"):
        log_metrics({"a": 1.0})
    with mlflow.start_run():
        with pytest.raises(MergelineError, match="missing.txt"):
            log_artifacts(tmp_path / "missing.txt")


def test_read_only_commands_refuse_a_store_that_is_not_there(tmp_path: Path) -> None:
    from mergeline.tracking.mlflow_setup import use_store

    with pytest.raises(MergelineError, match="no MLflow store here"):
        use_store(f"sqlite:///{tmp_path}/absent.db", must_exist=True)
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("uri", ["ftp://host/store", "s3://bucket/mlruns"])
def test_a_writer_refuses_a_scheme_mlflow_cannot_track_to(uri: str) -> None:
    # One line naming the URI, before MLflow builds a store (its own error is a registry traceback).
    with pytest.raises(MergelineError, match="not an MLflow tracking URI"):
        configure_tracking(uri, "any")


def test_read_only_commands_open_a_file_store_folder_and_refuse_a_missing_one(tmp_path: Path) -> None:
    from mergeline.tracking.mlflow_setup import use_store

    (tmp_path / "mlruns").mkdir()
    assert use_store((tmp_path / "mlruns").as_uri(), must_exist=True) == (tmp_path / "mlruns").as_uri()
    with pytest.raises(MergelineError, match="no MLflow file store"):
        use_store((tmp_path / "absent").as_uri(), must_exist=True)
    with pytest.raises(MergelineError, match="not an MLflow tracking URI"):
        use_store("ftp://host/store", must_exist=True)
