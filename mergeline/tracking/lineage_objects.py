"""MLflow 3's own lineage objects for a registered merged model: what the MLflow UI draws.

From the version's :class:`~mergeline.lineage.record.Lineage`:
- each task's dataset splits become datasets (name ``<task>/<split>``, digest: the first 32 hex
  characters of the file's sha256, as MLflow keeps 36; the full sha256 and path are input tags),
  inputs of the fine-tune run (``train``), of the registering run and of the experiment's parent run;
- the base model, each fine-tuned checkpoint and each task vector become external logged models
  (their weights stay in the work folder and DVC: the model records path, sha256, params and
  metrics), created by the stage run that made them, which lists what they were made from as its
  model inputs (base → fine-tune run → checkpoint → extract-vector run → vector);
- the merged model itself (``registry.py``) is a logged model holding the files, made by the
  registering run, whose inputs are the vectors and the evaluation datasets.
A logged model is reused when its run already recorded the same content: a re-run served from
Prefect's cache, or a second registered variant of the same experiment, adds nothing twice.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.data
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mergeline.lineage.locate import recorded_path
from mergeline.lineage.record import SOURCE_PREFIX, Artifact, Lineage
from mergeline.tracking.mlflow_setup import param_strings

KIND_TAG = "mergeline.kind"
SHA256_TAG = "mergeline.sha256"
PATH_TAG = "mergeline.path"
UPSTREAM_TAG = "mergeline.upstream"
DIGEST_CHARS = 32
CONTEXT_TAG = "mlflow.data.context"
# Rows read into a dataset's schema and profile; the digest covers the whole file regardless.
PROFILE_ROWS = 10_000


def model_name(text: str) -> str:
    """``text`` as a logged model's name: MLflow refuses / : . % " ' in one (``0.5`` -> ``0_5``)."""
    return re.sub(r"[/:.%\"']", "_", text) or "_"


def dataset_name(task: str, split: str) -> str:
    return f"{task}/{split}"


def _dataset(task: str, split: str, artifact: Artifact, root: Path) -> DatasetEntity:
    """The split file as an MLflow dataset whose digest is its sha256 (schema and row count from a read)."""
    path = recorded_path(artifact.path, root).resolve()
    frame = pd.read_json(path, lines=True, nrows=PROFILE_ROWS) if path.suffix == ".jsonl" and path.is_file() \
        else pd.DataFrame()
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that the path is ambiguous, and
        # hints about integer columns when it infers the schema; neither concerns a logged dataset.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(path.as_uri())
        return mlflow.data.from_pandas(frame, source=source, name=dataset_name(task, split),
                                       digest=artifact.sha256[:DIGEST_CHARS])._to_mlflow_entity()


@dataclass
class LineageObjects:
    """What :func:`record_lineage_objects` logged: model ids by role, datasets by ``task/split``."""

    base: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, DatasetEntity] = field(default_factory=dict)
    parent_run: str | None = None

    def model_ids(self) -> list[str]:
        return [m for m in (self.base, *self.checkpoints.values(), *self.vectors.values()) if m]


class _Recorder:
    def __init__(self, client: MlflowClient, experiment_id: str, fallback_run: str, root: Path) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.fallback_run = fallback_run
        self.root = root
        self._known: dict[str, bool] = {}

    def run(self, run_id: str | None) -> str | None:
        """``run_id`` when it is a live run of this store (a lineage may name runs of another store)."""
        if not run_id:
            return None
        if run_id not in self._known:
            try:
                self._known[run_id] = self.client.get_run(run_id).info.lifecycle_stage == "active"
            except MlflowException:
                self._known[run_id] = False
        return run_id if self._known[run_id] else None

    def model(self, name: str, kind: str, artifact: Artifact | None, run_id: str | None,
              params: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
              upstream: Iterable[str] = ()) -> str:
        """An external logged model made by ``run_id``; the one already there when it has the same content."""
        run = self.run(run_id) or self.fallback_run
        sha256 = artifact.sha256 if artifact is not None else ""
        existing = self.client.search_logged_models(
            [self.experiment_id], max_results=1,
            filter_string=f"source_run_id = '{run}' AND name = '{model_name(name)}' AND tags.`{KIND_TAG}` = '{kind}' "
                          f"AND tags.`{SHA256_TAG}` = '{sha256 or '-'}'")
        if existing:
            return existing[0].model_id
        upstream = [u for u in upstream if u]
        tags = {KIND_TAG: kind, SHA256_TAG: sha256 or "-", UPSTREAM_TAG: ",".join(upstream) or "-"}
        if artifact is not None:
            tags[PATH_TAG] = artifact.path
        model = mlflow.create_external_model(name=model_name(name), source_run_id=run, tags=tags, model_type=kind,
                                             params=param_strings(params or {}), experiment_id=self.experiment_id)
        if metrics:
            log_model_metrics(self.client, run, model.model_id, metrics)
        link_models(self.client, run, inputs=upstream, outputs=[model.model_id])
        return model.model_id

    def datasets(self, lineage: Lineage) -> dict[str, DatasetEntity]:
        found = {}
        for task in lineage.tasks:
            for split, artifact in task.datasets.items():
                if not split.startswith(SOURCE_PREFIX):
                    found[dataset_name(task.name, split)] = _dataset(task.name, split, artifact, self.root)
        return found


def dataset_inputs(datasets: Mapping[str, DatasetEntity], lineage: Lineage) -> list[DatasetInput]:
    """``datasets`` as run inputs: context = split, the full sha256 and recorded path as tags."""
    artifacts = {dataset_name(t.name, s): a for t in lineage.tasks for s, a in t.datasets.items()}
    return [DatasetInput(ds, tags=[
        InputTag(CONTEXT_TAG, name.rsplit("/", 1)[1]), InputTag(SHA256_TAG, artifacts[name].sha256),
        InputTag(PATH_TAG, artifacts[name].path)]) for name, ds in datasets.items()]


def log_model_metrics(client: MlflowClient, run_id: str, model_id: str, metrics: Mapping[str, float],
                      datasets: Mapping[str, DatasetEntity] | None = None) -> None:
    """Metrics of a logged model, logged by ``run_id``; ``<split>/<metric>/<task>`` is tied to ``task/split``."""
    now = int(time.time() * 1000)
    rows = []
    for key, value in metrics.items():
        parts = key.split("/")
        dataset = (datasets or {}).get(dataset_name(parts[-1], parts[0])) if len(parts) >= 3 else None
        rows.append(Metric(key, float(value), now, 0, model_id=model_id,
                           dataset_name=dataset.name if dataset else None,
                           dataset_digest=dataset.digest if dataset else None))
    for start in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=rows[start:start + 1000])


def link_models(client: MlflowClient, run_id: str, inputs: Iterable[str] = (), outputs: Iterable[str] = ()) -> None:
    """Logged models as inputs and outputs of ``run_id``, each once (MLflow itself would repeat them)."""
    run = client.get_run(run_id)
    have_in = {m.model_id for m in run.inputs.model_inputs or []} if run.inputs else set()
    have_out = {m.model_id for m in run.outputs.model_outputs or []} if run.outputs else set()
    new_in = [m for m in dict.fromkeys(inputs) if m not in have_in]
    new_out = [m for m in dict.fromkeys(outputs) if m not in have_out]
    if new_in:
        client.log_inputs(run_id, models=[LoggedModelInput(m) for m in new_in])
    if new_out:
        client.log_outputs(run_id, [LoggedModelOutput(m, 0) for m in new_out])


def record_lineage_objects(client: MlflowClient, lineage: Lineage, register_run: str, experiment_id: str,
                           root: Path) -> LineageObjects:
    """Datasets, base, checkpoints and vectors of ``lineage`` as MLflow datasets and logged models."""
    rec = _Recorder(client, experiment_id, register_run, root)
    parent = rec.run(lineage.mlflow.parent_run_id)
    found = LineageObjects(datasets=rec.datasets(lineage))
    base = lineage.base_model
    found.base = rec.model(f"base-{Path(base.id).name}", "base", base, parent,
                           params={"id": base.id})
    stage_runs = lineage.mlflow.stage_run_ids
    for task in lineage.tasks:
        own = {k: v for k, v in found.datasets.items() if k.startswith(f"{task.name}/")}
        if task.finetune is not None:
            mode = task.finetune.mode
            name = f"{task.name}-{mode}"
            if (finetune_run := rec.run(task.finetune.run_id)) is not None:
                train = {k: v for k, v in own.items() if k.endswith("/train")}
                client.log_inputs(finetune_run, datasets=dataset_inputs(train, lineage))
            checkpoint = rec.model(name, "fine-tuned", task.finetune.checkpoint, task.finetune.run_id,
                                   params={"task": task.name, "mode": mode, **task.finetune.params},
                                   metrics=task.finetune.metrics, upstream=[found.base])
        else:
            mode, name = "full", f"{task.name}-{task.source}"
            checkpoint = rec.model(name, f"given-{task.source}", task.given, None, params={"task": task.name},
                                   upstream=[found.base])
        found.checkpoints[task.name] = checkpoint
        if task.vector is not None:
            found.vectors[task.name] = rec.model(
                f"vector-{name}", "task-vector", task.vector, stage_runs.get(f"vectors/{task.name}:{mode}"),
                params={"task": task.name, "mode": mode}, upstream=[checkpoint, found.base])
    inputs = dataset_inputs(found.datasets, lineage)
    for run in dict.fromkeys(r for r in (register_run, parent) if r):
        client.log_inputs(run, datasets=inputs)
    link_models(client, register_run, inputs=found.vectors.values())
    if parent:
        link_models(client, parent, outputs=found.model_ids())
    found.parent_run = parent
    return found


__all__ = ["LineageObjects", "dataset_inputs", "link_models", "log_model_metrics", "record_lineage_objects"]
