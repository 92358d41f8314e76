"""What the registry can be trusted for: tampering, shared stores, runs that died.

``lineage --verify`` and ``reproduce`` against each way of tampering with a registered version (each
test registers its own version of the tiny fixture model and tampers with that one only: the lineage
file, its tags, the stored weights, the source run); folders sharing one tracking store; the MLflow
records a dead run leaves behind. Real MLflow (one temporary SQLite store) and the real merge engine.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mergeline.cli import main
from mergeline.io.hashing import sha256_file
from mergeline.lineage.record import Lineage
from mergeline.lineage.build import describe
from mergeline.tracking.anchors import LINEAGE_TAG, WEIGHTS_TAG
from mergeline.tracking.mlflow_setup import open_store, store_lock
from mergeline.tracking.orphans import OWNER_TAG, close_owner_runs
from mergeline.tracking.registry import model_artifact_dir, register_merged_model, resolve_version
from tests.lineage_fixtures import MODEL_NAME, Project, copy_project, flip_byte, tracking_store

SHARED, ORPHAN = "shared-store-model", "orphaned-model"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    proj = copy_project(tmp_path_factory, "audit")
    with tracking_store(proj.root) as uri:
        proj.uri = uri  # type: ignore[attr-defined]
        yield proj


def _register(project: Project, alias: str, lineage: Lineage | None = None) -> tuple[str, Path]:
    register_merged_model(project.root / "merged", MODEL_NAME, lineage or project.lineage, [alias])
    version = resolve_version(f"{MODEL_NAME}@{alias}")
    return f"{MODEL_NAME}@{alias}", model_artifact_dir(version)


def _cli(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, "--tracking-uri", project.uri, "--root", str(project.root)])  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    return code, out, err


def _rewrite_lineage(folder: Path, edit) -> Lineage:  # type: ignore[no-untyped-def]
    lineage = Lineage.model_validate_json((folder / "lineage.json").read_text())
    edit(lineage)
    (folder / "lineage.json").write_text(lineage.to_json())
    return lineage


def _version(spec: str):  # type: ignore[no-untyped-def]
    return resolve_version(spec)


def test_deleted_lineage_tag_does_not_let_an_edited_lineage_pass(project: Project, capsys) -> None:  # type: ignore[no-untyped-def]
    spec, folder = _register(project, "notag")
    assert _cli(project, capsys, "lineage", spec, "--verify")[0] == 0
    _rewrite_lineage(folder, lambda lin: lin.evaluation.update({"validation/alpha/acc": 1.0}))
    version = _version(spec)
    MlflowClient().delete_model_version_tag(MODEL_NAME, version.version, LINEAGE_TAG)
    code, _, err = _cli(project, capsys, "lineage", spec, "--verify")
    assert code == 1 and f"missing: tag {LINEAGE_TAG}" in err, err
    MlflowClient().set_model_version_tag(MODEL_NAME, version.version, "mergeline.method", "ties")
    code, _, err = _cli(project, capsys, "lineage", spec, "--verify")
    assert code == 1 and "mismatch: tag mergeline.method ('ties'" in err, err


def test_consistently_rewritten_lineage_still_fails_on_weights_and_source_run(project: Project, capsys) -> None:  # type: ignore[no-untyped-def]
    spec, folder = _register(project, "rewritten")
    other_run = MlflowClient().create_run(MlflowClient().get_experiment_by_name("lineage-tests").experiment_id)

    def forge(lineage: Lineage) -> None:
        lineage.weights = {name: "ab" * 32 for name in lineage.weights}
        lineage.mlflow.registered_run_id = other_run.info.run_id

    forged = _rewrite_lineage(folder, forge)
    version = _version(spec)
    # The forger also rewrites the lineage hash tag: what the registry recorded elsewhere still disagrees.
    MlflowClient().set_model_version_tag(MODEL_NAME, version.version, LINEAGE_TAG, forged.sha256())
    code, _, err = _cli(project, capsys, "lineage", spec, "--verify")
    assert code == 1, err
    assert f"mismatch: tag {WEIGHTS_TAG}" in err
    assert f"mismatch: source run of {MODEL_NAME} v{version.version} (run {version.run_id}" in err
    assert f"mismatch: {folder / 'model.safetensors'} (sha256" in err


def test_stored_weights_corrupted_or_added_fail_verify_and_reproduce(project: Project, capsys) -> None:  # type: ignore[no-untyped-def]
    spec, folder = _register(project, "corrupt")
    flip_byte(folder / "model.safetensors")
    (folder / "extra.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    code, _, err = _cli(project, capsys, "lineage", spec, "--verify")
    assert code == 1 and f"mismatch: {folder / 'model.safetensors'} (sha256" in err
    assert f"mismatch: {folder / 'extra.safetensors'} (registered weight file that lineage.json does not list)" in err
    out_dir = project.root / "rebuilt-corrupt"
    code, out, err = _cli(project, capsys, "reproduce", spec, "--out", str(out_dir))
    assert code == 1 and "bit for bit" not in out, out
    # The rebuild equals what lineage.json records; only the stored weights differ, and the line says so.
    model_lines = [line for line in err.splitlines() if "model.safetensors sha256" in line]
    assert model_lines and all("lineage.json records" not in line for line in model_lines), err
    assert f"mismatch: {out_dir / 'model.safetensors'} sha256" in err and "the registered artifact stores" in err
    assert "rebuilt weights differ from" in err


def test_reproduce_refuses_a_rewritten_lineage_even_when_the_rebuild_matches_it(project: Project, capsys) -> None:  # type: ignore[no-untyped-def]
    spec, folder = _register(project, "relabel")
    out_dir = project.root / "rebuilt-relabel"
    code, out, _ = _cli(project, capsys, "reproduce", spec, "--out", str(out_dir))
    assert code == 0 and "equal to the registered artifact and to its lineage" in out
    # Rewrite the merge to λ=0.6 and record the weights that rebuild gives: self-consistent, but not
    # what was registered (tags) nor what is stored.
    relabelled = project.lineage.model_copy(deep=True)
    relabelled.merge.config["parameters"]["lambda"] = 0.6
    scratch_spec, _ = _register(project, "scratch", relabelled)
    _cli(project, capsys, "reproduce", scratch_spec, "--out", str(project.root / "lambda06"))
    rebuilt = {"model.safetensors": sha256_file(project.root / "lambda06" / "model.safetensors")}

    def rewrite(lineage: Lineage) -> None:
        lineage.merge.config["parameters"]["lambda"] = 0.6
        lineage.weights = rebuilt

    _rewrite_lineage(folder, rewrite)
    code, out, err = _cli(project, capsys, "reproduce", spec, "--out", str(project.root / "rebuilt-relabel-2"))
    assert code == 1 and "bit for bit" not in out
    assert "mismatch: lineage.json (sha256" in err and "cannot be trusted" in err, err
    assert "the registered artifact stores" in err


def test_opening_the_store_waits_for_the_store_lock(project: Project) -> None:
    uri = project.uri  # type: ignore[attr-defined]
    opened = threading.Event()
    with store_lock(uri):
        worker = threading.Thread(target=lambda: (open_store(uri), opened.set()))
        worker.start()
        assert not opened.wait(1.0)  # another process creating or migrating the schema holds it
    worker.join(timeout=120)
    assert opened.is_set() and Path(uri[len("sqlite:///"):]).with_name("mlflow.db.lock").is_file()


def test_each_folders_champion_verifies_from_the_other_folder(project: Project, tmp_path_factory, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    first, second = copy_project(tmp_path_factory, "folder-a"), copy_project(tmp_path_factory, "folder-b")
    # Folder B's run saw other data: its lineage differs from A's files.
    (second.root / "data/alpha/train.jsonl").write_text('{"id": "b", "prompt": "b", "choices": ["a", "b"], "label": 1}\n')
    second.lineage.tasks[0].datasets["train"] = describe("data/alpha/train.jsonl", root=second.root)
    uri = project.uri  # type: ignore[attr-defined]
    register_merged_model(first.root / "merged", SHARED, first.lineage, ["champion"], work_dir=first.root)
    register_merged_model(second.root / "merged", SHARED, second.lineage, ["champion"], work_dir=second.root)
    monkeypatch.chdir(first.root)
    for spec, folder in ((f"{SHARED}@champion", second.root), (f"{SHARED}@1", None)):
        code = main(["lineage", spec, "--verify", "--tracking-uri", uri])
        err = capsys.readouterr().err
        assert code == 0, err
        assert (f"from the work folder of the run that registered it, {folder}" in err) == (folder is not None)
    # An explicit --root still wins: A's files do not match B's lineage.
    code = main(["lineage", f"{SHARED}@champion", "--verify", "--tracking-uri", uri, "--root", str(first.root)])
    assert code == 1 and "mismatch: data/alpha/train.jsonl" in capsys.readouterr().err


def test_runs_of_a_dead_owner_end_killed_and_its_versions_are_deleted(project: Project) -> None:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lineage-tests").experiment_id
    parent = client.create_run(experiment, tags={OWNER_TAG: "host:1:2"}).info.run_id
    stage = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    register = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    register_merged_model(project.root / "merged", ORPHAN, project.lineage, ["champion"], run_id=register)
    client.set_terminated(register, "FINISHED")
    someone_else = client.create_run(experiment, tags={OWNER_TAG: "host:3:4"}).info.run_id
    closed = close_owner_runs("host:1:2", project.uri)  # type: ignore[attr-defined]
    assert sorted(closed.killed_runs) == sorted([parent, stage]) and closed.deleted_versions == [f"{ORPHAN} v1"]
    assert [client.get_run(r).info.status for r in (parent, stage, register, someone_else)] == [
        "KILLED", "KILLED", "FINISHED", "RUNNING"]
    assert client.search_model_versions(f"name = '{ORPHAN}'") == []
