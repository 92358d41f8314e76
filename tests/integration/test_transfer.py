"""Stage files and records through MLflow run artifacts (real MLflow, temporary SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import file_hashes
from mergeline.io.outputs import MARKER
from mergeline.tracking.transfer import (
    FILES, fetch_files, fetch_record, file_refs, is_server, share_files, share_record,
)
from tests.lineage_fixtures import tracking_store


@pytest.fixture()
def run_id(tmp_path: Path):  # type: ignore[no-untyped-def]
    with tracking_store(tmp_path / "store"):
        client = MlflowClient()
        yield client.create_run(client.get_experiment_by_name("lineage-tests").experiment_id).info.run_id


def _project(root: Path) -> None:
    (root / "data/work/checkpoints").mkdir(parents=True)
    with atomic_dir(root / "data/work/checkpoints/news", kind="checkpoint") as out:
        (out / "sub").mkdir()
        (out / "model.safetensors").write_bytes(b"weights" * 100)
        (out / "sub/config.json").write_text('{"a": 1}')
    (root / "data/tasks/news").mkdir(parents=True)
    (root / "data/tasks/news/train.jsonl").write_text('{"x": 1}\n')


def test_files_travel_between_folders_checked_and_only_once(run_id: str, tmp_path: Path) -> None:
    sender, receiver = tmp_path / "conductor", tmp_path / "worker"
    _project(sender)
    paths = ["data/work/checkpoints/news", "data/tasks/news/train.jsonl"]
    assert share_files(run_id, sender, paths) == paths
    assert share_files(run_id, sender, paths) == []  # same content: nothing sent again
    assert fetch_files(run_id, receiver, paths) == paths
    assert file_hashes(receiver / "data/work/checkpoints/news") == file_hashes(sender / "data/work/checkpoints/news")
    # It arrives as an output of the same kind, marked for the files that came (a later stage may replace it).
    assert json.loads((receiver / "data/work/checkpoints/news" / MARKER).read_text())["kind"] == "checkpoint"
    assert (receiver / "data/tasks/news/train.jsonl").read_text() == '{"x": 1}\n'
    assert fetch_files(run_id, receiver, paths) == []  # already here with that content
    # A changed local copy is replaced by what was shared; a changed share is sent again.
    (receiver / "data/tasks/news/train.jsonl").write_text("edited\n")
    assert fetch_files(run_id, receiver, paths) == ["data/tasks/news/train.jsonl"]
    (sender / "data/tasks/news/train.jsonl").write_text('{"x": 2}\n')
    assert share_files(run_id, sender, paths) == ["data/tasks/news/train.jsonl"]


def test_a_damaged_transfer_never_lands(run_id: str, tmp_path: Path) -> None:
    sender, receiver = tmp_path / "conductor", tmp_path / "worker"
    _project(sender)
    share_files(run_id, sender, ["data/work/checkpoints/news"])
    stored = Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (stored / FILES / "data/work/checkpoints/news/model.safetensors").write_bytes(b"tampered")
    with pytest.raises(MergelineError, match="data/work/checkpoints/news: transferred copy differs.*model.safetensors"):
        fetch_files(run_id, receiver, ["data/work/checkpoints/news"])
    assert not (receiver / "data/work/checkpoints/news").exists()


def test_unshared_paths_and_paths_outside_the_project_are_refused(run_id: str, tmp_path: Path) -> None:
    with pytest.raises(MergelineError, match="data/x: not in the project folder and not shared"):
        fetch_files(run_id, tmp_path, ["data/x"])
    with pytest.raises(MergelineError, match="only paths inside the project folder"):
        fetch_files(run_id, tmp_path, ["../etc"])
    with pytest.raises(MergelineError, match="missing"):
        share_files(run_id, tmp_path, ["data/absent"])
    (tmp_path / "data/plain").mkdir(parents=True)
    with pytest.raises(MergelineError, match="data/plain: not a mergeline output folder"):
        share_files(run_id, tmp_path, ["data/plain"])


def test_records_and_the_file_references_in_them(run_id: str) -> None:
    record = {"task": "news", "path": "data/work/checkpoints/news", "sha256": "ab",
              "data": {"train": {"path": "data/tasks/news/train.jsonl", "sha256": "cd"}},
              "list": [{"path": "data/work/checkpoints/news", "sha256": "ab"}, {"path": 3, "sha256": "x"}]}
    assert file_refs(record) == ["data/work/checkpoints/news", "data/tasks/news/train.jsonl"]
    assert fetch_record(run_id, "flow-run-1") is None
    share_record(run_id, "flow-run-1", record)
    assert fetch_record(run_id, "flow-run-1") == json.loads(json.dumps(record))
    assert is_server("http://127.0.0.1:5000") and not is_server("sqlite:////tmp/mlflow.db")
