"""The lineage record of a registered model: the schema of ``lineage.json`` and the registry tags.

ARCHITECTURE.md ("Registry lineage") is the contract: every registered version carries a
``lineage.json`` beside its weights (this :class:`Lineage` model, written as JSON) and a short form
of it in model-version tags (:func:`version_tags`). The full record lives only in ``lineage.json``;
tags are truncated with a marker so each stays well under MLflow's 5,000-character limit.

Hashes: every ``sha256`` is :func:`mergeline.io.hashing.sha256_path` of the recorded path (the file
hash for a file, ``sha256_dir`` for a folder). Folders also list ``files`` (per-file sha256 and md5)
so a verification can name the one file that changed and find each file in a DVC cache by its md5.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

SCHEMA_VERSION = 1

# MLflow rejects model-version tags over 5,000 characters; stay well below so a tag never fails a
# registration, and point readers at the artifact that holds the untruncated value.
TAG_LIMIT = 4000
TRUNCATED_MARKER = "…[truncated; full value in lineage.json]"

TAG_KEYS: tuple[str, ...] = (
    "mergeline.method",
    "mergeline.coefficients",
    "mergeline.sparsity",
    "mergeline.base_model_sha256",
    "mergeline.task_vectors",
    "mergeline.params_sha256",
    "mergeline.git_commit",
    "mergeline.dvc_lock_sha256",
    "mergeline.prefect_flow_run_id",
    "mergeline.lineage_sha256",
)


class _Strict(BaseModel):
    # Unknown fields are errors so a typo in a producer cannot silently drop provenance.
    model_config = ConfigDict(extra="forbid")


class FileHash(_Strict):
    """Hashes of one file inside a folder artifact."""

    sha256: str
    md5: str | None = Field(None, description="md5 of the bytes: DVC 3's cache key for the file")


class Artifact(_Strict):
    """A file or folder the model depends on, by content."""

    path: str = Field(description="where it was when recorded (relative to the repo root or absolute)")
    sha256: str = Field(description="sha256_path(path): file hash, or sha256_dir for a folder")
    dvc_md5: str | None = Field(None, description="DVC's md5 of the output ('<md5>.dir' for folders)")
    files: dict[str, FileHash] | None = Field(None, description="folders: per-file hashes by POSIX relpath")


class ImportanceArtifact(Artifact):
    kind: str = Field(description="e.g. sta, talos_mask, lata, metagpt_norms, stats")


class BaseModelRef(Artifact):
    id: str = Field(description="hub id or path the base model was imported from")


class FineTune(_Strict):
    mode: Literal["full", "talos", "lora"]
    run_id: str | None = Field(None, description="MLflow run id of the fine-tune")
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    checkpoint: Artifact | None = None


# datasets key of a user data file the splits were built from: "source:<path>"
SOURCE_PREFIX = "source:"


class TaskLineage(_Strict):
    name: str
    datasets: dict[str, Artifact] = Field(
        default_factory=dict, description=f"split name -> JSONL file; '{SOURCE_PREFIX}<path>' -> a user data file")
    finetune: FineTune | None = None
    vector: Artifact | None = Field(None, description="task vector folder (task_vector.safetensors + .json)")
    importance: list[ImportanceArtifact] = Field(default_factory=list)
    source: Literal["finetune", "checkpoint", "adapter"] = Field(
        "finetune", description="fine-tuned by the pipeline, or given as a checkpoint or a LoRA adapter")
    given: Artifact | None = Field(None, description="the checkpoint or adapter folder given (per-file sha256)")


class MergeInfo(_Strict):
    method: str
    config: dict[str, Any] = Field(description="the full merge config (mergekit YAML schema) as run")
    coefficients: dict[str, float] = Field(default_factory=dict, description="e.g. {'lambda': 0.4, task: w}")
    sparsity: float | dict[str, float] | None = Field(
        None, description="fraction of task-vector entries dropped (1 - mergekit density), per task if it varies"
    )
    per_layer: dict[str, dict[str, float]] | None = Field(
        None, description="task -> {layer index: coefficient} for methods that weight layers (LATA, STA)"
    )
    seed: int | None = None
    device: Literal["cpu", "cuda"] | None = Field(
        None, description="kind of device the merge ran on; `reproduce` rebuilds there (absent: cpu)")

    @model_serializer(mode="wrap")
    def _omit_absent_device(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # device came later: a lineage without it dumps, and so hashes, exactly as it was written
        out = handler(self)
        if out.get("device") is None:
            out.pop("device", None)
        return out


class CodeInfo(_Strict):
    git_commit: str | None = None
    dirty: bool = False


class DvcInfo(_Strict):
    lock_sha256: str | None = None


class PrefectInfo(_Strict):
    flow_run_id: str | None = None


class MlflowInfo(_Strict):
    parent_run_id: str | None = None
    stage_run_ids: dict[str, str] = Field(default_factory=dict, description="stage (or stage/task) -> run id")
    registered_run_id: str | None = Field(None, description="run whose artifacts the version points at")


class ParamsInfo(_Strict):
    path: str | None = None
    sha256: str | None = None
    resolved: dict[str, Any] = Field(default_factory=dict)


class Lineage(_Strict):
    """Everything needed to trace, verify and rebuild one merged model."""

    schema_version: int = SCHEMA_VERSION
    base_model: BaseModelRef
    tasks: list[TaskLineage] = Field(default_factory=list)
    merge: MergeInfo
    evaluation: dict[str, float] = Field(default_factory=dict, description="flat metric name -> value")
    code: CodeInfo = Field(default_factory=CodeInfo)
    dvc: DvcInfo = Field(default_factory=DvcInfo)
    prefect: PrefectInfo = Field(default_factory=PrefectInfo)
    mlflow: MlflowInfo = Field(default_factory=MlflowInfo)
    params: ParamsInfo = Field(default_factory=ParamsInfo)
    weights: dict[str, str] = Field(description="weight file (relative to the model folder) -> sha256")

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace: the bytes :meth:`sha256` hashes (formatting-independent)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_json(self) -> str:
        """The ``lineage.json`` text: indented for people, keys sorted for stable diffs."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def artifacts(self) -> list[tuple[str, Artifact]]:
        """Every local artifact the lineage names, with a label: base, checkpoints, datasets, vectors, importance."""
        found: list[tuple[str, Artifact]] = [("base model", self.base_model)]
        for task in self.tasks:
            for split, dataset in task.datasets.items():
                found.append((f"dataset {task.name}/{split}", dataset))
            if task.finetune is not None and task.finetune.checkpoint is not None:
                found.append((f"checkpoint {task.name}", task.finetune.checkpoint))
            if task.given is not None:
                found.append((f"given {task.source} {task.name}", task.given))
            if task.vector is not None:
                found.append((f"task vector {task.name}", task.vector))
            for imp in task.importance:
                found.append((f"importance {task.name}/{imp.kind}", imp))
        return found


def _short_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def truncate_tag(value: str, limit: int = TAG_LIMIT) -> str:
    """Cut ``value`` to at most ``limit`` characters, ending with a marker when it was cut."""
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER


def version_tags(lineage: Lineage) -> dict[str, str]:
    """The model-version tags of ARCHITECTURE.md (exactly :data:`TAG_KEYS`), each <= :data:`TAG_LIMIT`."""
    none = "none"
    commit = lineage.code.git_commit or none
    if lineage.code.git_commit and lineage.code.dirty:
        commit += "-dirty"  # git describe's convention: the tree differed from the commit
    vectors = ",".join(f"{t.name}={t.vector.sha256}" for t in lineage.tasks if t.vector is not None)
    tags = {
        "mergeline.method": lineage.merge.method,
        "mergeline.coefficients": _short_json(lineage.merge.coefficients),
        "mergeline.sparsity": none if lineage.merge.sparsity is None else _short_json(lineage.merge.sparsity),
        "mergeline.base_model_sha256": lineage.base_model.sha256,
        "mergeline.task_vectors": vectors or none,
        "mergeline.params_sha256": lineage.params.sha256 or none,
        "mergeline.git_commit": commit,
        "mergeline.dvc_lock_sha256": lineage.dvc.lock_sha256 or none,
        "mergeline.prefect_flow_run_id": lineage.prefect.flow_run_id or none,
        "mergeline.lineage_sha256": lineage.sha256(),
    }
    return {key: truncate_tag(tags[key]) for key in TAG_KEYS}
