"""The end of an experiment: metrics file for DVC, lineage of each kept variant, registry versions.

The champion (best mean normalized accuracy on validation) gets alias ``champion``; the runners-up
worth keeping get ``candidate`` (then ``candidate-2``, …: an MLflow alias names one version).
Registration checks every weight file's sha256 first, so no version points at a partial artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mergeline.params import ExperimentParams
from mergeline.pipeline.lineage import build_lineage
from mergeline.pipeline.records import Experiment
from mergeline.pipeline.report import results_table
from mergeline.stages.common import StageContext
from mergeline.stages.evaluate import DETAILS, registered_variants, write_metrics
from mergeline.stages.merge import ensure_merged
from mergeline.tracking import describe_run, killed_on_interrupt
from mergeline.tracking.anchors import WEIGHTS_TAG, weights_digest
from mergeline.tracking.registry import register_merged_model
from mergeline.tracking.experiment_plots import log_experiment_plots
from tasks._stage import RunHandle
from tasks.assets import registering


def _version_with_alias(name: str, alias: str) -> Any:
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def finish_experiment(params: ExperimentParams, params_file: str, exp: Experiment, run: RunHandle,
                      flow_run_id: str | None) -> dict[str, Any]:
    """Register the champion and the candidates (each with its lineage); the run's summary."""
    assert exp.scores is not None
    scores = exp.scores
    root = Path(run.root)
    ctx = StageContext(params, root, run.device)
    metrics_path = write_metrics(ctx, scores)  # also written by the evaluate stage; the same bytes
    mlflow.log_artifact(str(metrics_path), artifact_path="eval")
    mlflow.log_artifact(str(metrics_path.parent / DETAILS), artifact_path="eval")
    table = results_table(params, exp)
    mlflow.log_text(table, "results.md")
    describe_run(table)  # the parent run's description in the MLflow UI
    registered: dict[str, dict[str, str]] = {}
    name = params.registry.model_name
    for position, variant in enumerate(registered_variants(ctx, scores)):
        alias = params.registry.champion_alias if position == 0 else (
            params.registry.candidate_alias + ("" if position == 1 else f"-{position}"))
        merged = exp.merged[variant]
        existing = _version_with_alias(name, alias)
        if existing is not None and existing.tags.get(WEIGHTS_TAG) == weights_digest(merged.weights):
            # Same weights already hold this alias: an unchanged re-run registers nothing new.
            registered[variant] = {"version": existing.version, "alias": alias,
                                   "message": f"already registered: {name} version {existing.version} @{alias} "
                                              f"({variant})"}
            continue
        ensure_merged(ctx, merged)
        lineage = build_lineage(params, params_file, exp, variant, root, run.parent_run_id, flow_run_id)
        with mlflow.start_run(run_name=f"register:{variant}", nested=True, parent_run_id=run.parent_run_id) as reg, \
                killed_on_interrupt():
            mlflow.set_tag("mergeline.stage", "register")
            version = registering(params.experiment, name, alias, merged.path)(register_merged_model)(
                root / merged.path, name, lineage, [alias], run_id=reg.info.run_id, work_dir=root)
        registered[variant] = {"version": version, "alias": alias,
                               "message": f"registered {name} version {version} @{alias} ({variant})"}
    _log_plots(params, exp, run)
    for variant, row in scores.test_rows.items():
        mlflow.log_metrics({f"test/{variant}/{k.replace('/', '_')}": v for k, v in row.items()})
    for choice in scores.edits:  # e.g. negation/news/task_arithmetic/target
        mlflow.log_metrics({f"{choice.edit}/{choice.task}/{choice.method}/{k}": v for k, v in
                            {**choice.test, "lambda": choice.chosen.lam, "rule_met": float(choice.rule_met)}.items()})
    return {"champion": scores.selection.champion, "registered": registered, "test_rows": scores.test_rows,
            "metrics_file": str(metrics_path)}


def _log_plots(params: ExperimentParams, exp: Experiment, run: RunHandle) -> None:
    """λ/density curves, per-task accuracy, control drift, layer weights and stage plots on the parent run."""
    if run.parent_run_id is None or exp.scores is None:
        return
    reference = exp.scores.reference
    stage = [Path(run.root) / p for p in [*(i.plot for i in exp.importance.values()),
                                          exp.diagnostics.plot if exp.diagnostics else None] if p]
    log_experiment_plots(
        run.parent_run_id, stage_plots=stage, tasks=params.task_names, control=params.control,
        variants={name: {"method": m.variant.method, "lambda": m.variant.lam, "density": m.variant.density}
                  for name, m in exp.additions.items()},
        validation=exp.scores.validation_rows, test=exp.scores.test_rows,
        base=reference["base"]["test"].metrics, metric=params.evaluate.select_by,
        experts={t: reference[f"single-{t}-full"]["test"].metrics.get(t) if "test" in reference.get(
            f"single-{t}-full", {}) else None for t in params.task_names},
        per_layer={name: m.report.get("per_layer") or {} for name, m in exp.additions.items()},
        edits=exp.scores.edits)
