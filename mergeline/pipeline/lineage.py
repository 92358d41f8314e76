"""The lineage of one merged variant, assembled from the records of the experiment that made it."""

from __future__ import annotations

from pathlib import Path

from mergeline.lineage.record import (
    SOURCE_PREFIX, Artifact, BaseModelRef, FineTune, ImportanceArtifact, Lineage, MergeInfo, MlflowInfo, PrefectInfo,
    TaskLineage,
)
from mergeline.lineage.build import code_info, describe, dvc_info, params_info
from mergeline.methods import pipeline_method
from mergeline.params import ExperimentParams, vector_mode
from mergeline.pipeline.records import Checkpoint, DataRecord, Experiment, Fit, Variant


def build_lineage(params: ExperimentParams, params_file: str, exp: Experiment, variant: str, root: Path,
                  parent_run_id: str | None, flow_run_id: str | None) -> Lineage:
    """Base, every task (data, fine-tune with the settings it used, vector, importance), the merge, the
    scores, code, DVC lock, params and runs of ``variant``; every artifact described by content."""
    assert exp.base is not None and exp.data is not None and exp.scores is not None
    merged = exp.merged[variant]
    method = merged.variant.method
    mode = vector_mode(method)
    tasks = []
    for task in params.task_names:
        ck = exp.checkpoints[Fit(task, mode)]
        tasks.append(TaskLineage(
            name=task,
            datasets=_datasets(exp.data, task, root),
            finetune=None if ck.source != "finetune" else FineTune(
                mode=ck.mode, run_id=ck.mlflow_run_id, params=ck.params, metrics=_finetune_metrics(ck)),
            vector=describe(exp.vectors[Fit(task, mode)].path, root=root),
            importance=importance_artifacts(method, exp, task, root),
            source=ck.source,  # type: ignore[arg-type]
            given=describe(ck.given.path, root=root) if ck.given is not None else None,
        ))
    scores = exp.scores
    return Lineage(
        base_model=describe(exp.base.path, BaseModelRef, root=root, id=params.base_model),
        tasks=tasks,
        merge=MergeInfo(method=method, config=merged.config, coefficients=_coefficients(merged.variant, merged.report),
                        # Lineage records sparsity as the fraction dropped; the sweep is in densities (kept).
                        sparsity=None if merged.variant.density is None else 1.0 - merged.variant.density,
                        per_layer=merged.report.get("per_layer"), seed=merged.config["parameters"].get("seed"),
                        device=str(merged.report.get("device", "cpu")).split(":")[0]),
        evaluation={**{f"test/{k}": v for k, v in scores.test_rows[variant].items()},
                    **{f"validation/{k}": v for k, v in scores.validation_rows[variant].items()}},
        code=code_info(root), dvc=dvc_info(root), prefect=PrefectInfo(flow_run_id=flow_run_id),
        mlflow=MlflowInfo(parent_run_id=parent_run_id, stage_run_ids=stage_runs(exp, variant)),
        params=params_info(root / params_file, params.model_dump(mode="json", by_alias=True), root),
        weights=merged.weights,
    )


def importance_artifacts(method: str, exp: Experiment, task: str, root: Path) -> list[ImportanceArtifact]:
    """The task's statistics the method's merges read: STA scores, RegMean's Gram matrices (by content)."""
    entry = pipeline_method(method)[1]
    return [describe(imp.path, ImportanceArtifact, root=root, kind=imp.kind)
            for needed, records in ((entry.importance, exp.importance), (entry.gram, exp.grams))
            if needed and (imp := records.get(task)) is not None]


def _datasets(data: DataRecord, task: str, root: Path) -> dict[str, Artifact]:
    """The task's split files, and the user data files they were built from (by content)."""
    found = {split: describe(ref.path, root=root) for split, ref in data.tasks[task].items()}
    for path in data.sources.get(task, {}):
        found[f"{SOURCE_PREFIX}{path}"] = describe(path, root=root)
    return found


def _finetune_metrics(checkpoint: Checkpoint) -> dict[str, float]:
    losses = checkpoint.meta.get("losses") or []
    out = {"seconds": float(checkpoint.seconds)}
    if losses:
        out.update(first_loss=float(losses[0]), final_loss=float(losses[-1]))
    return out


def _coefficients(variant: Variant, report: dict[str, object]) -> dict[str, float]:
    coefficients = {"lambda": float(variant.lam)}
    reported = report.get("coefficients") or {}
    for key, value in reported.items() if isinstance(reported, dict) else ():
        if isinstance(value, (int, float)):
            coefficients[str(key)] = float(value)
    return coefficients


def stage_runs(exp: Experiment, variant: str) -> dict[str, str]:
    """MLflow run of every record the variant's lineage names: ``checkpoints/<task>:<mode>``, …, ``merge``."""
    runs: dict[str, str] = {}
    for group, records in (("checkpoints", exp.checkpoints), ("vectors", exp.vectors)):
        for fit, rec in records.items():
            if rec.mlflow_run_id:
                runs[f"{group}/{fit.task}:{fit.mode}"] = rec.mlflow_run_id
    for group, by_task in (("importance", exp.importance), ("gram", exp.grams)):
        for task, imp in by_task.items():
            if imp.mlflow_run_id:
                runs[f"{group}/{task}"] = imp.mlflow_run_id
    if exp.merged[variant].mlflow_run_id:
        runs["merge"] = exp.merged[variant].mlflow_run_id  # type: ignore[assignment]
    return runs


__all__ = ["build_lineage", "importance_artifacts", "stage_runs"]
