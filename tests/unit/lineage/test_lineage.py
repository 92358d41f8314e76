"""Lineage schema, canonical hash, registry tags and renderings (no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mergeline.lineage.record import (
    TAG_KEYS,
    TAG_LIMIT,
    TRUNCATED_MARKER,
    BaseModelRef,
    CodeInfo,
    FineTune,
    ImportanceArtifact,
    Lineage,
    MergeInfo,
    TaskLineage,
    version_tags,
)
from mergeline.io.hashing import sha256_dir
from mergeline.lineage.build import describe, md5_file, params_info, weight_files
from mergeline.lineage.render import render_json, render_mermaid, render_text


def _lineage(tmp_path: Path, tasks: int = 2, **merge: object) -> Lineage:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.safetensors").write_bytes(b"base")
    (tmp_path / "base" / "config.json").write_text("{}")
    items = []
    for i in range(tasks):
        name = f"task{i}"
        (tmp_path / f"{name}.jsonl").write_text(f'{{"id": "{i}"}}\n')
        vec = tmp_path / "vectors" / name
        vec.mkdir(parents=True)
        (vec / "task_vector.safetensors").write_bytes(f"vec{i}".encode())
        (tmp_path / f"{name}-sta.safetensors").write_bytes(f"sta{i}".encode())
        items.append(TaskLineage(
            name=name,
            datasets={"train": describe(tmp_path / f"{name}.jsonl")},
            finetune=FineTune(mode="full", run_id=f"run{i}", params={"lr": 1e-3}, metrics={"loss": 0.25}),
            vector=describe(vec),
            importance=[describe(tmp_path / f"{name}-sta.safetensors", ImportanceArtifact, kind="sta")],
        ))
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"merged")
    return Lineage(
        base_model=describe(tmp_path / "base", BaseModelRef, id="tiny-llama"),
        tasks=items,
        merge=MergeInfo(method="ties", config={"merge_method": "ties"}, **merge),
        evaluation={"task0/acc": 0.75},
        code=CodeInfo(git_commit="abc123", dirty=True),
        weights=weight_files(merged),
    )


def test_describe_records_folder_files_with_md5(tmp_path: Path) -> None:
    lineage = _lineage(tmp_path, tasks=1)
    vec = lineage.tasks[0].vector
    assert vec is not None and vec.files is not None
    entry = vec.files["task_vector.safetensors"]
    assert entry.md5 == md5_file(Path(vec.path) / "task_vector.safetensors")
    # folder_sha256 must stay sha256_dir's formula (one file and several).
    assert vec.sha256 == sha256_dir(vec.path) and lineage.base_model.sha256 == sha256_dir(lineage.base_model.path)
    dataset = lineage.tasks[0].datasets["train"]
    assert dataset.files is None and dataset.dvc_md5 == md5_file(dataset.path)
    assert set(lineage.weights) == {"model.safetensors"}


def test_sha256_is_canonical_and_json_round_trips(tmp_path: Path) -> None:
    lineage = _lineage(tmp_path)
    again = Lineage.model_validate_json(render_json(lineage))
    assert again == lineage and again.sha256() == lineage.sha256()
    # Key order in the file does not change the hash; any value change does.
    shuffled = json.loads(lineage.to_json(), object_pairs_hook=lambda kv: dict(reversed(kv)))
    assert Lineage.model_validate(shuffled).sha256() == lineage.sha256()
    changed = lineage.model_copy(deep=True)
    changed.merge.coefficients["lambda"] = 0.5
    assert changed.sha256() != lineage.sha256()


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    data = json.loads(_lineage(tmp_path).to_json())
    data["merge"]["coefficent"] = 1.0
    with pytest.raises(ValidationError, match="coefficent"):
        Lineage.model_validate(data)


def test_version_tags_are_exactly_the_contract(tmp_path: Path) -> None:
    lineage = _lineage(tmp_path, coefficients={"lambda": 0.4}, sparsity=0.2)
    tags = version_tags(lineage)
    assert tuple(tags) == TAG_KEYS
    assert tags["mergeline.method"] == "ties"
    assert json.loads(tags["mergeline.coefficients"]) == {"lambda": 0.4}
    assert tags["mergeline.sparsity"] == "0.2"
    assert tags["mergeline.base_model_sha256"] == lineage.base_model.sha256
    assert tags["mergeline.git_commit"] == "abc123-dirty"
    assert tags["mergeline.lineage_sha256"] == lineage.sha256()
    assert tags["mergeline.task_vectors"].split(",")[1] == f"task1={lineage.tasks[1].vector.sha256}"
    assert tags["mergeline.prefect_flow_run_id"] == "none"


def test_long_tags_are_truncated_with_a_marker(tmp_path: Path) -> None:
    coefficients = {f"task_with_a_long_name_{i}": 0.123456789 for i in range(400)}
    lineage = _lineage(tmp_path, tasks=80, coefficients=coefficients)
    tags = version_tags(lineage)
    for key in ("mergeline.coefficients", "mergeline.task_vectors"):
        assert len(tags[key]) == TAG_LIMIT and tags[key].endswith(TRUNCATED_MARKER)
    assert all(len(v) < 5000 for v in tags.values())


def test_render_text_names_every_part(tmp_path: Path) -> None:
    lineage = _lineage(tmp_path, coefficients={"lambda": 0.4}, per_layer={"task0": {"10": 0.5, "2": 0.25}}, seed=7)
    text = render_text(lineage, registered="demo v3 @champion")
    for fact in ("model demo v3 @champion", "base model: tiny-llama", lineage.base_model.sha256,
                 "fine-tune: mode full, mlflow run run0", "importance sta", "merge: ties, seed 7",
                 "coefficient lambda = 0.4", "task0/acc = 0.75", "code: git abc123 (dirty)"):
        assert fact in text
    # Layers sort numerically, not as strings.
    assert "per-layer task0: 2:0.25, 10:0.5" in text


def test_render_mermaid_is_a_connected_graph(tmp_path: Path) -> None:
    lineage = _lineage(tmp_path, coefficients={"lambda": 0.4})
    lineage.base_model.id = 'weird "id" (v1)'
    graph = render_mermaid(lineage, registered="demo v1")
    lines = graph.splitlines()
    assert lines[0] == "graph TD"
    edges = {tuple(line.strip().split(" --> ")) for line in lines if "-->" in line}
    for chain in [("base", "ft_task0"), ("data_task0_train", "ft_task0"), ("ft_task0", "tv_task0"),
                  ("tv_task0", "imp_task0_sta"), ("imp_task0_sta", "merge"), ("tv_task1", "merge"),
                  ("merge", "eval"), ("eval", "registered")]:
        assert chain in edges
    # A raw quote would end the label early and break the diagram.
    assert all(line.count('"') in (0, 2) for line in lines)
    assert "#quot;id#quot;" in graph and 'registered["demo v1' in graph


def test_mermaid_routes_held_out_splits_to_evaluation(tmp_path: Path) -> None:
    lineage = _lineage(tmp_path, tasks=1)
    (tmp_path / "val.jsonl").write_text("{}\n")
    lineage.tasks[0].datasets["validation"] = describe(tmp_path / "val.jsonl")
    lineage.evaluation = {"test/acc/task0": 0.5, "test/norm_acc/mean": 0.9}
    graph = render_mermaid(lineage)
    assert "data_task0_validation --> eval" in graph and "data_task0_train --> ft_task0" in graph
    assert "data_task0_validation --> ft_task0" not in graph
    # Summary metrics come first in the small evaluation node.
    assert graph.index("test/norm_acc/mean") < graph.index("test/acc/task0")


def test_params_path_is_recorded_relative_to_the_project_root(tmp_path: Path) -> None:
    params = tmp_path / "params" / "default.yaml"
    params.parent.mkdir()
    params.write_text("experiment: x\n")
    assert params_info(params, root=tmp_path).path == "params/default.yaml"
    assert params_info(params).path == str(params)  # no root: as given
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.yaml"
    outside.write_text("experiment: y\n")
    assert params_info(outside, root=tmp_path).path == str(outside)


def test_merge_device_is_recorded_and_a_lineage_without_it_hashes_as_written(tmp_path: Path) -> None:
    import hashlib

    old = _lineage(tmp_path)
    written = json.loads(old.to_json())
    assert "device" not in written["merge"]
    # The digest of a lineage written before the field existed is still the digest of its own bytes.
    as_written = json.dumps(written, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert old.sha256() == hashlib.sha256(as_written.encode()).hexdigest()
    on_gpu = old.model_copy(deep=True)
    on_gpu.merge.device = "cuda"
    assert json.loads(on_gpu.to_json())["merge"]["device"] == "cuda" and on_gpu.sha256() != old.sha256()
    assert Lineage.model_validate_json(on_gpu.to_json()) == on_gpu
    with pytest.raises(ValidationError, match="device"):
        MergeInfo(method="ties", config={}, device="tpu")
