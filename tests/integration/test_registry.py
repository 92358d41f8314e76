"""Registration with lineage on real MLflow (temporary SQLite store), resolution, verify, load-back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mergeline.errors import MergelineError
from mergeline.lineage.record import TAG_KEYS, Lineage
from mergeline.tracking.registry import (
    check_weights, load_lineage, model_artifact_dir, register_merged_model, resolve_version, verify_lineage,
)
from tests.lineage_fixtures import MODEL_NAME, Project, copy_project, flip_byte, tracking_store


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    proj = copy_project(tmp_path_factory, "registry")
    with tracking_store(proj.root):
        version = register_merged_model(proj.root / "merged", MODEL_NAME, proj.lineage, ["champion"])
        assert version == "1"
        yield proj


def _versions() -> int:
    return len(MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"))


def test_version_has_every_tag_and_the_lineage_artifact(project: Project) -> None:
    mv = resolve_version(f"{MODEL_NAME}@champion")
    assert set(TAG_KEYS) <= set(mv.tags) and all(len(mv.tags[k]) < 5000 for k in TAG_KEYS)
    stored = load_lineage(mv)
    assert stored.mlflow.registered_run_id == mv.run_id
    # The artifact is the caller's lineage plus the run it was registered from, and the tag pins it.
    assert stored.model_copy(update={"mlflow": project.lineage.mlflow}) == project.lineage
    assert mv.tags["mergeline.lineage_sha256"] == stored.sha256()
    assert mv.tags["mergeline.base_model_sha256"] == project.lineage.base_model.sha256
    assert mv.tags["mergeline.method"] == "task_arithmetic"
    assert json.loads(mv.tags["mergeline.coefficients"])["lambda"] == 0.5
    folder = model_artifact_dir(mv)
    assert (folder / "lineage.mmd").read_text().startswith("graph TD")
    assert json.loads((folder / "lineage.json").read_text())["weights"] == project.lineage.weights
    run = MlflowClient().get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mergeline.registered_version"] == f"{MODEL_NAME}/1"


def test_specs_resolve_and_unknown_ones_are_bad_input(project: Project) -> None:
    for spec in (MODEL_NAME, f"{MODEL_NAME}@1", f"{MODEL_NAME}@champion", f"models:/{MODEL_NAME}/1"):
        assert str(resolve_version(spec).version) == "1"
    for spec, needle in ((f"{MODEL_NAME}@9", "no version 9"), (f"{MODEL_NAME}@nope", "no alias 'nope'"),
                         ("no-such-model", "no registered model named 'no-such-model'"), ("@1", "expected NAME")):
        with pytest.raises(MergelineError, match=needle):
            resolve_version(spec)


@pytest.mark.parametrize("damage", ["missing", "altered", "unlisted"])
def test_registration_refuses_bad_weights_and_creates_no_version(
    project: Project, tmp_path: Path, damage: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(project.root / "merged", model)
    weights = model / "model.safetensors"
    lineage = project.lineage
    if damage == "missing":
        weights.unlink()
    elif damage == "altered":
        flip_byte(weights)
    else:
        shutil.copyfile(weights, model / "extra.safetensors")
    before = _versions()
    with pytest.raises(MergelineError, match="nothing registered") as err:
        register_merged_model(model, MODEL_NAME, lineage, ["candidate"])
    assert ("extra.safetensors" if damage == "unlisted" else "model.safetensors") in str(err.value)
    assert _versions() == before
    with pytest.raises(MergelineError, match="alias"):
        register_merged_model(project.root / "merged", MODEL_NAME, lineage, ["v2"])
    assert _versions() == before


def test_verify_passes_then_names_each_flipped_or_deleted_file(project: Project) -> None:
    mv = resolve_version(f"{MODEL_NAME}@champion")
    lineage = load_lineage(mv)
    root = project.root
    assert verify_lineage(lineage, mv, root) == []
    registered = model_artifact_dir(mv) / "model.safetensors"
    for target, expected in [
        (registered, str(registered)),
        (root / "vectors/beta/task_vector.safetensors", "vectors/beta/task_vector.safetensors"),
        (root / "data/alpha/train.jsonl", "data/alpha/train.jsonl"),
        (root / "params.yaml", "params.yaml"),
    ]:
        flip_byte(target)
        try:
            problems = verify_lineage(lineage, mv, root)
        finally:
            flip_byte(target)  # flipping again restores it for the next case
        assert [(p.file, p.status) for p in problems] == [(expected, "mismatch")]
    moved = root / "importance/alpha/stats.json"
    moved.rename(moved.with_suffix(".bak"))
    try:
        [problem] = verify_lineage(lineage, mv, root)
    finally:
        moved.with_suffix(".bak").rename(moved)
    assert (problem.file, problem.status) == ("importance/alpha/stats.json", "missing")
    # An edited lineage.json no longer matches the hash pinned in the version's tag.
    edited = lineage.model_copy(update={"evaluation": {"validation/alpha/acc": 1.0}})
    assert [p.file for p in verify_lineage(edited, mv, root)] == ["lineage.json"]


def test_registered_model_loads_back_with_transformers(project: Project) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = model_artifact_dir(resolve_version(f"{MODEL_NAME}@champion"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()


def test_new_version_takes_over_the_alias(project: Project) -> None:
    lineage = project.lineage.model_copy(deep=True)
    lineage.evaluation["validation/alpha/acc"] = 0.9
    version = register_merged_model(project.root / "merged", MODEL_NAME, lineage, ["champion", "candidate"],
                                     run_id=MlflowClient().create_run(
                                         MlflowClient().get_experiment_by_name("lineage-tests").experiment_id).info.run_id)
    assert int(version) > 1
    assert str(resolve_version(f"{MODEL_NAME}@champion").version) == version == str(resolve_version(MODEL_NAME).version)
    assert resolve_version(f"{MODEL_NAME}@1").aliases == []
    assert Lineage.model_validate(load_lineage(resolve_version(f"{MODEL_NAME}@candidate"))).evaluation[
        "validation/alpha/acc"] == 0.9
    assert check_weights(model_artifact_dir(resolve_version(f"{MODEL_NAME}@candidate")), lineage.weights) is None
