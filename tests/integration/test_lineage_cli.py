"""``mergeline lineage`` and ``mergeline reproduce`` end to end: real MLflow (temp SQLite), real DVC
(temp repo with a local remote), the real merge engine; exit codes through the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mergeline.cli import main
from mergeline.lineage.record import Lineage
from mergeline.tracking.registry import model_artifact_dir, register_merged_model, resolve_version
from tests.lineage_fixtures import MODEL_NAME, Project, copy_project, flip_byte, tracking_store

SPEC = f"{MODEL_NAME}@champion"


def _dvc(root: Path, *args: str) -> None:
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    proj = copy_project(tmp_path_factory, "cli")
    _dvc(proj.root, "init", "--no-scm", "-q")
    _dvc(proj.root, "add", "-q", "base", "vectors/alpha", "vectors/beta", "data/alpha/train.jsonl")
    _dvc(proj.root, "remote", "add", "-d", "store", str(proj.root.parent / f"{proj.root.name}-remote"))
    _dvc(proj.root, "push", "-q")
    with tracking_store(proj.root) as uri:
        register_merged_model(proj.root / "merged", MODEL_NAME, proj.lineage, ["champion"])
        proj.uri = uri  # type: ignore[attr-defined]
        yield proj


def cli(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real CLI entry point in this process (fast: MLflow already imported)."""
    code = main([*args, "--tracking-uri", project.uri, "--root", str(project.root)])  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    return code, out, err


def cli_subprocess(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": project.uri}  # type: ignore[attr-defined]
    return subprocess.run([sys.executable, "-m", "mergeline.cli", *args], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_unknown_alias_through_the_console_exits_2(project: Project) -> None:
    bad = cli_subprocess(project, "lineage", f"{MODEL_NAME}@nope")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: {MODEL_NAME}@nope: registered model '{MODEL_NAME}' has no alias 'nope'"]


def test_formats_and_unknown_name_or_version(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(project, capsys, "lineage", SPEC, "--format", "json", "--verify")
    assert code == 0, err
    assert Lineage.model_validate_json(out).weights == project.lineage.weights and "matches its lineage" in err
    code, out, _ = cli(project, capsys, "lineage", SPEC)
    assert code == 0
    assert f"model {MODEL_NAME} v1 @champion" in out and "task vector: vectors/alpha" in out
    assert "coefficient lambda = 0.5" in out and "fine-tune: mode full, mlflow run ft-run-beta" in out
    code, out, _ = cli(project, capsys, "lineage", SPEC, "--format", "mermaid")
    assert code == 0 and out.startswith("graph TD\n") and "tv_beta --> merge" in out
    for spec in ("no-such-model", f"{MODEL_NAME}@7"):
        code, _, err = cli(project, capsys, "lineage", spec, "--verify")
        assert code == 2 and err.startswith(f"error: {spec}: ")


def test_verify_names_each_flipped_file_and_deleted_artifact(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    registered = model_artifact_dir(resolve_version(SPEC)) / "model.safetensors"
    root = project.root
    for target, name in [(registered, str(registered)),
                         (root / "vectors/alpha/task_vector.safetensors", "vectors/alpha/task_vector.safetensors"),
                         (root / "data/beta/train.jsonl", "data/beta/train.jsonl")]:
        flip_byte(target)
        try:
            code, _, err = cli(project, capsys, "lineage", SPEC, "--verify")
        finally:
            flip_byte(target)
        assert code == 1 and f"mismatch: {name} (" in err
    stats = root / "importance/beta/stats.json"
    stats.rename(stats.with_name("stats.bak"))
    try:
        code, _, err = cli(project, capsys, "lineage", SPEC, "--verify")
    finally:
        stats.with_name("stats.bak").rename(stats)
    assert code == 1 and "missing: importance/beta/stats.json" in err
    assert cli(project, capsys, "lineage", SPEC, "--verify")[0] == 0


def test_reproduce_detects_a_config_that_does_not_give_the_registered_weights(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = project.lineage.model_copy(deep=True)
    wrong.merge.config["parameters"]["lambda"] = 0.6  # the registered weights were merged with 0.5
    version = register_merged_model(project.root / "merged", MODEL_NAME, wrong, ["tampered"])
    code, _, err = cli(project, capsys, "reproduce", f"{MODEL_NAME}@tampered", "--out", str(project.root / "wrong"))
    assert code == 1 and "mismatch: " in err and "model.safetensors" in err
    assert f"rebuilt weights differ from {MODEL_NAME} v{version} @tampered" in err
    flip_byte(project.root / "vectors/beta/task_vector.safetensors")
    try:
        code, _, err = cli(project, capsys, "reproduce", SPEC, "--out", str(project.root / "wrong"), "--overwrite")
    finally:
        flip_byte(project.root / "vectors/beta/task_vector.safetensors")
    assert code == 1 and "mismatch: vectors/beta/task_vector.safetensors" in err and "cannot rebuild" in err


def test_reproduce_never_writes_over_or_into_a_stage_output(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """A task vector no input of the lineage names (another task's, in the same work folder): its
    folder is neither replaced with --overwrite nor written into."""
    from mergeline.finetune.checkpoint import extract_task_vector

    gamma = project.root / "vectors" / "gamma"
    extract_task_vector(project.root / "base", project.root / "ft" / "alpha", gamma)
    before = {p.name: p.read_bytes() for p in gamma.iterdir()}
    try:
        for out, extra, says in ((gamma, ["--overwrite"], "holds a task vector that mergeline wrote, not a merged model"),
                                 (gamma / "rebuilt", [], "is inside " + str(gamma) + ", an output mergeline wrote")):
            code, _, err = cli(project, capsys, "reproduce", SPEC, "--out", str(out), *extra)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {out}: {says}"), err
        assert {p.name: p.read_bytes() for p in gamma.iterdir()} == before
    finally:
        shutil.rmtree(gamma)


def test_dvc_cache_and_remote_stand_in_for_deleted_inputs(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    root = project.root
    shutil.rmtree(root / "vectors/alpha")
    shutil.rmtree(root / "base")
    # Rebuilt from the DVC cache, bit for bit.
    code, out, err = cli(project, capsys, "reproduce", SPEC, "--out", str(root / "rebuilt"))
    assert code == 0, err
    assert "1 weight file(s) of tiny-merged v1 @champion rebuilt bit for bit" in out
    assert not (root / "vectors/alpha").exists()  # inputs were materialized aside, not into the workspace
    shutil.rmtree(root / ".dvc" / "cache")
    code, _, err = cli(project, capsys, "lineage", SPEC, "--verify")
    assert code == 0, err  # the local remote still holds every file
    shutil.rmtree(root.parent / f"{root.name}-remote")
    code, _, err = cli(project, capsys, "lineage", SPEC, "--verify")
    assert code == 1
    assert "missing: vectors/alpha/task_vector.safetensors" in err and "missing: base/model.safetensors" in err
    assert "vectors/beta" not in err  # still in the workspace and intact


def test_missing_lineage_json_is_a_failure_not_bad_input(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    lineage_file = model_artifact_dir(resolve_version(SPEC)) / "lineage.json"
    lineage_file.unlink()
    code, _, err = cli(project, capsys, "lineage", SPEC)
    assert code == 1 and f"missing: {lineage_file}" in err
