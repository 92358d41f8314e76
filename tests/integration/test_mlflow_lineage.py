"""MLflow 3's own lineage objects on a registered merge (real MLflow, temporary SQLite store).

The version is a logged model with the files and loads with ``mlflow.transformers.load_model``; its
datasets, base, checkpoints and task vectors are datasets and logged models linked to the runs that
made and used them; the registered model and the version carry descriptions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from mergeline.lineage.build import describe
from mergeline.tracking.lineage_objects import DIGEST_CHARS, KIND_TAG, SHA256_TAG, UPSTREAM_TAG
from mergeline.tracking.registry import model_artifact_dir, register_merged_model, resolve_version, verify_lineage
from tests.lineage_fixtures import MODEL_NAME, build_project, tracking_store
from tests.lm_fixtures import smollm2_tokenizer_dir

EVALUATION = {"test/acc/alpha": 0.625, "test/acc/beta": 0.5, "test/acc/mean": 0.5625, "validation/acc/alpha": 0.75}


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("mlflow-lineage")
    project = build_project(root, tokenizer=smollm2_tokenizer_dir())
    lineage = project.lineage.model_copy(deep=True)
    for task in lineage.tasks:
        test = root / "data" / task.name / "test.jsonl"
        test.write_text("".join(json.dumps({"prompt": f"{task.name} {k}", "choices": ["a", "b"], "label": k % 2})
                                + "\n" for k in range(3)))
        task.datasets["test"] = describe(str(test.relative_to(root)), root=root)
    lineage.evaluation = dict(EVALUATION)
    with tracking_store(root) as uri:
        client = MlflowClient()
        experiment = client.get_experiment_by_name("lineage-tests").experiment_id
        parent = client.create_run(experiment, run_name="pipeline:tiny").info.run_id

        def stage_run(name: str) -> str:
            return client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id

        lineage.mlflow.parent_run_id = parent
        lineage.mlflow.stage_run_ids = {}
        for task in lineage.tasks:
            task.finetune.run_id = stage_run(f"fine-tune:{task.name}-full")
            lineage.mlflow.stage_run_ids[f"vectors/{task.name}:full"] = stage_run(f"extract-vector:{task.name}")
        champion = register_merged_model(root / "merged", MODEL_NAME, lineage, ["champion"], work_dir=root)
        runner_up = lineage.model_copy(deep=True)
        runner_up.evaluation["test/acc/mean"] = 0.5
        candidate = register_merged_model(root / "merged", MODEL_NAME, runner_up, ["candidate"], work_dir=root)
        yield {"root": root, "uri": uri, "lineage": lineage, "parent": parent, "experiment": experiment,
               "versions": (champion, candidate)}


def test_champion_loads_with_mlflow_transformers_in_one_call(registered: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    generator = mlflow.transformers.load_model(f"models:/{MODEL_NAME}@champion")
    assert type(generator).__name__ == "TextGenerationPipeline"
    out = generator("alpha 1", max_new_tokens=2, do_sample=False)
    assert out[0]["generated_text"].startswith("alpha 1")
    # The pipeline's weights are the merge's, bit for bit (the flavor reads the registered folder).
    merged = AutoModelForCausalLM.from_pretrained(registered["root"] / "merged").state_dict()
    loaded = generator.model.state_dict()
    assert merged.keys() == loaded.keys() and all(torch.equal(merged[k], loaded[k]) for k in merged)


def test_version_is_registered_from_its_logged_model_made_by_the_registering_run(registered: dict[str, Any]) -> None:
    client = MlflowClient()
    version = resolve_version(f"{MODEL_NAME}@champion")
    assert version.source.startswith("models:/m-")
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == version.run_id and model.status.to_proto() == 2  # READY
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": MODEL_NAME, "version": version.version}]
    assert model.tags[KIND_TAG] == "merged" and model.params["method"] == "task_arithmetic"
    assert model.params["coefficient.lambda"] == "0.5" and model.params["sparsity"] == "none"
    # Its evaluation metrics are on it, each test metric tied to the task's test dataset.
    metrics = {m.key: m for m in model.metrics}
    assert {k: m.value for k, m in metrics.items()} == EVALUATION
    alpha_test = registered["lineage"].tasks[0].datasets["test"]
    assert (metrics["test/acc/alpha"].dataset_name, metrics["test/acc/alpha"].dataset_digest) == (
        "alpha/test", alpha_test.sha256[:DIGEST_CHARS])
    assert metrics["test/acc/mean"].dataset_name is None
    # The files are the logged model's, and verification still holds end to end.
    assert (model_artifact_dir(version) / "MLmodel").is_file()
    assert verify_lineage(registered["lineage"].model_copy(update={"mlflow": version_lineage_mlflow(version)}),
                          version, registered["root"]) == []


def version_lineage_mlflow(version: Any) -> Any:
    from mergeline.tracking.registry import load_lineage

    return load_lineage(version).mlflow


def test_registered_model_and_versions_carry_descriptions(registered: dict[str, Any]) -> None:
    client = MlflowClient()
    model = client.get_registered_model(MODEL_NAME)
    assert f'mlflow.transformers.load_model("models:/{MODEL_NAME}@champion")' in model.description
    version = resolve_version(f"{MODEL_NAME}@champion")
    assert version.description.startswith("**task_arithmetic** merge of the task vectors of `alpha`, `beta`")
    assert "lambda = 0.5" in version.description and "Sparsity" in version.description
    assert "| acc/alpha | acc/beta | acc/mean |" in version.description and "| 0.625 | 0.5 | 0.5625 |" in version.description
    assert "0.5 |" in resolve_version(f"{MODEL_NAME}@candidate").description


def test_datasets_are_run_inputs_with_their_digests(registered: dict[str, Any]) -> None:
    client = MlflowClient()
    lineage = registered["lineage"]
    expected = {f"{t.name}/{split}": a.sha256 for t in lineage.tasks for split, a in t.datasets.items()}
    version = resolve_version(f"{MODEL_NAME}@champion")
    for run_id in (registered["parent"], version.run_id):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        found = {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}) for i in inputs}
        assert set(found) == set(expected)
        for name, (digest, tags) in found.items():
            assert digest == expected[name][:DIGEST_CHARS] and tags[SHA256_TAG] == expected[name]
            assert tags["mlflow.data.context"] == name.split("/")[1]
    finetune = client.get_run(lineage.tasks[0].finetune.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in finetune] == ["alpha/train"]


def test_base_checkpoints_and_vectors_are_logged_models_linked_through_their_runs(registered: dict[str, Any]) -> None:
    client = MlflowClient()
    lineage = registered["lineage"]
    models = client.search_logged_models([registered["experiment"]])
    by_kind: dict[str, list[Any]] = {}
    for model in models:
        by_kind.setdefault(model.tags[KIND_TAG], []).append(model)
    # Two registrations of one experiment: the shared upstream models exist once, the merges twice.
    assert {k: len(v) for k, v in by_kind.items()} == {"base": 1, "fine-tuned": 2, "task-vector": 2, "merged": 2}
    [base] = by_kind["base"]
    assert base.tags[SHA256_TAG] == lineage.base_model.sha256 and base.source_run_id == registered["parent"]
    for task in lineage.tasks:
        [checkpoint] = [m for m in by_kind["fine-tuned"] if m.params["task"] == task.name]
        [vector] = [m for m in by_kind["task-vector"] if m.params["task"] == task.name]
        assert checkpoint.source_run_id == task.finetune.run_id
        assert checkpoint.params["lr"] == "0.0001" and {m.key: m.value for m in checkpoint.metrics} == task.finetune.metrics
        assert vector.source_run_id == lineage.mlflow.stage_run_ids[f"vectors/{task.name}:full"]
        assert vector.tags[SHA256_TAG] == task.vector.sha256 and vector.tags[UPSTREAM_TAG] == f"{checkpoint.model_id},{base.model_id}"
        ft_run = client.get_run(task.finetune.run_id)
        assert [m.model_id for m in ft_run.inputs.model_inputs] == [base.model_id]
        assert [m.model_id for m in ft_run.outputs.model_outputs] == [checkpoint.model_id]
        vec_run = client.get_run(vector.source_run_id)
        assert {m.model_id for m in vec_run.inputs.model_inputs} == {checkpoint.model_id, base.model_id}
    register_run = client.get_run(resolve_version(f"{MODEL_NAME}@champion").run_id)
    assert {m.model_id for m in register_run.inputs.model_inputs} == {m.model_id for m in by_kind["task-vector"]}
    parent_outputs = [m.model_id for m in client.get_run(registered["parent"]).outputs.model_outputs]
    assert sorted(parent_outputs) == sorted(m.model_id for m in models)  # every model once
