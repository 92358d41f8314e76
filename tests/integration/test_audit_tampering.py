"""``lineage --verify`` and ``reproduce`` against each way of tampering with a registered version.

Real MLflow (temporary SQLite) and the real merge engine; each test registers its own version of the
tiny fixture model and tampers with that one only: the lineage file, its tags, the stored weights, the
source run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mergeline.cli import main
from mergeline.io.hashing import sha256_file
from mergeline.lineage import Lineage
from mergeline.tracking.anchors import LINEAGE_TAG, WEIGHTS_TAG
from mergeline.tracking.registry import model_artifact_dir, register_merged_model, resolve_version
from tests.lineage_fixtures import MODEL_NAME, Project, copy_project, flip_byte, tracking_store


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
    code, out, err = _cli(project, capsys, "reproduce", spec, "--out", str(out_dir))
    assert code == 1 and "bit for bit" not in out
    assert "mismatch: lineage.json (sha256" in err and "cannot be trusted" in err, err
    assert "the registered artifact stores" in err
