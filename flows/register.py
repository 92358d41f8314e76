"""The end of an experiment: metrics file for DVC, lineage of each kept variant, registry versions.

The champion (best mean normalized accuracy on validation) gets alias ``champion``; the runners-up
worth keeping get ``candidate`` (then ``candidate-2``, …: an MLflow alias names one version).
Registration checks every weight file's sha256 first, so no version points at a partial artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeline.lineage.record import (
    SOURCE_PREFIX, BaseModelRef, FineTune, ImportanceArtifact, Lineage, MergeInfo, MlflowInfo, PrefectInfo, TaskLineage,
)
from mergeline.lineage.build import code_info, describe, dvc_info, params_info
from mergeline.params import ExperimentParams, vector_mode
from mergeline.stages.common import StageContext
from mergeline.stages.evaluate import registered_variants, write_metrics
from mergeline.stages.merge import ensure_merged
from mergeline.tracking.anchors import WEIGHTS_TAG, weights_digest
from tasks._stage import RunHandle
from tasks.assets import registering


def _version_with_alias(name: str, alias: str):  # type: ignore[no-untyped-def]
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def build_lineage(params: ExperimentParams, params_file: str, records: dict[str, Any], variant: str,
                  run: RunHandle, stage_runs: dict[str, str]) -> Lineage:
    root = Path(run.root)
    method = records["variants"][variant]["method"]
    mode = vector_mode(method)
    tasks = []
    for task in params.task_names:
        ck = records["checkpoints"][f"{task}:{mode}"]
        vec = records["vectors"][f"{task}:{mode}"]
        source = ck.get("source", "finetune")
        importance = []
        if method == "sta" and task in records["importance"]:
            imp = records["importance"][task]
            importance.append(describe(imp["path"], ImportanceArtifact, root=root, kind=imp["kind"]))
        tasks.append(TaskLineage(
            name=task,
            datasets=_datasets(records["data"], task, root),
            finetune=None if source != "finetune" else FineTune(
                mode=ck["mode"], run_id=ck.get("mlflow_run_id"), params=ck["params"], metrics=_finetune_metrics(ck)),
            vector=describe(vec["path"], root=root),
            importance=importance,
            source=source,
            given=describe(ck["input"]["path"], root=root) if source != "finetune" else None,
        ))
    merged = records["merged"][variant]
    variant_spec = records["variants"][variant]
    report = merged.get("report") or {}
    return Lineage(
        base_model=describe(records["base"]["path"], BaseModelRef, root=root, id=params.base_model),
        tasks=tasks,
        merge=MergeInfo(method=method, config=records["configs"][variant],
                        coefficients=_coefficients(variant_spec, report),
                        # Lineage records sparsity as the fraction dropped; the sweep is in densities (kept).
                        sparsity=None if variant_spec["density"] is None else 1.0 - variant_spec["density"],
                        per_layer=report.get("per_layer"), seed=params.merge.seed if method == "dare_ties" else None),
        evaluation={**{f"test/{k}": v for k, v in records["test_rows"][variant].items()},
                    **{f"validation/{k}": v for k, v in records["validation_rows"][variant].items()}},
        code=code_info(root), dvc=dvc_info(root), prefect=PrefectInfo(flow_run_id=_flow_run_id()),
        mlflow=MlflowInfo(parent_run_id=run.parent_run_id, stage_run_ids=stage_runs),
        params=params_info(root / params_file, params.model_dump(mode="json", by_alias=True), root),
        weights=merged["weights"],
    )


def _datasets(data: dict[str, Any], task: str, root: Path) -> dict[str, Any]:
    """The task's split files, and the user data files they were built from (by content)."""
    found = {split: describe(rec["path"], root=root) for split, rec in data["tasks"][task].items()}
    for path in data.get("sources", {}).get(task, {}):
        found[f"{SOURCE_PREFIX}{path}"] = describe(path, root=root)
    return found


def _finetune_metrics(checkpoint: dict[str, Any]) -> dict[str, float]:
    meta = checkpoint.get("meta") or {}
    losses = meta.get("losses") or []
    out = {"seconds": float(checkpoint.get("seconds", 0.0))}
    if losses:
        out.update(first_loss=float(losses[0]), final_loss=float(losses[-1]))
    return out


def _coefficients(variant: dict[str, Any], report: dict[str, Any]) -> dict[str, float]:
    coefficients = {"lambda": float(variant["lambda"])}
    for key, value in (report.get("coefficients") or {}).items():
        if isinstance(value, (int, float)):
            coefficients[str(key)] = float(value)
    return coefficients


def _stage_runs(records: dict[str, Any], variant: str) -> dict[str, str]:
    runs: dict[str, str] = {}
    for group in ("checkpoints", "vectors", "importance"):
        for key, rec in records.get(group, {}).items():
            if rec.get("mlflow_run_id"):
                runs[f"{group}/{key}"] = rec["mlflow_run_id"]
    if records["merged"][variant].get("mlflow_run_id"):
        runs["merge"] = records["merged"][variant]["mlflow_run_id"]
    return runs


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def finish_experiment(params: ExperimentParams, params_file: str, records: dict[str, Any],
                      run: RunHandle) -> dict[str, Any]:
    import mlflow

    from flows.report import results_table
    from mergeline.tracking import describe_run, killed_on_interrupt
    from mergeline.tracking.registry import register_merged_model

    root = Path(run.root)
    ctx = StageContext(params, root, run.device)
    metrics_path = write_metrics(ctx, records)  # also written by the evaluate stage; the same bytes
    mlflow.log_artifact(str(metrics_path), artifact_path="eval")
    table = results_table(params, records)
    mlflow.log_text(table, "results.md")
    describe_run(table)  # the parent run's description in the MLflow UI
    ranking = records["selection"]["ranking"]
    keep = registered_variants(ctx, records)
    registered: dict[str, dict[str, str]] = {}
    name = params.registry.model_name
    for position, variant in enumerate(keep):
        alias = params.registry.champion_alias if position == 0 else (
            params.registry.candidate_alias + ("" if position == 1 else f"-{position}"))
        digest = weights_digest(records["merged"][variant]["weights"])
        existing = _version_with_alias(name, alias)
        if existing is not None and existing.tags.get(WEIGHTS_TAG) == digest:
            # Same weights already hold this alias: an unchanged re-run registers nothing new.
            registered[variant] = {"version": existing.version, "alias": alias,
                                   "message": f"already registered: {name} version {existing.version} @{alias} "
                                              f"({variant})"}
            continue
        ensure_merged(ctx, records["merged"][variant])
        lineage = build_lineage(params, params_file, records, variant, run, _stage_runs(records, variant))
        with mlflow.start_run(run_name=f"register:{variant}", nested=True, parent_run_id=run.parent_run_id) as reg, \
                killed_on_interrupt():
            mlflow.set_tag("mergeline.stage", "register")
            merged_path = records["merged"][variant]["path"]
            version = registering(params.experiment, name, alias, merged_path)(register_merged_model)(
                root / merged_path, name, lineage, [alias], run_id=reg.info.run_id, work_dir=root)
        registered[variant] = {"version": version, "alias": alias,
                               "message": f"registered {name} version {version} @{alias} ({variant})"}
    _log_plots(params, records, run)
    for name, row in records["test_rows"].items():
        mlflow.log_metrics({f"test/{name}/{k.replace('/', '_')}": v for k, v in row.items()})
    return {"champion": ranking[0], "registered": registered, "test_rows": records["test_rows"],
            "metrics_file": str(metrics_path)}


def _log_plots(params: ExperimentParams, records: dict[str, Any], run: RunHandle) -> None:
    """λ/density curves, per-task accuracy, control drift, layer weights and stage plots on the parent run."""
    from mergeline.tracking.experiment_plots import log_experiment_plots

    if run.parent_run_id is None:
        return
    reference = records["reference"]
    stage = [Path(run.root) / rec["plot"] for rec in [*records.get("importance", {}).values(),
                                                      records.get("diagnostics") or {}] if rec.get("plot")]
    log_experiment_plots(
        run.parent_run_id, stage_plots=stage, tasks=params.task_names, control=params.control,
        variants=records["variants"], validation=records["validation_rows"], test=records["test_rows"],
        base=reference["base"]["test"]["metrics"], metric=params.evaluate.select_by,
        experts={t: reference.get(f"single-{t}-full", {}).get("test", {}).get("metrics", {}).get(t)
                 for t in params.task_names},
        per_layer={name: (m.get("report") or {}).get("per_layer") or {} for name, m in records["merged"].items()})
