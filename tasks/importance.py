"""Task ``compute-importance``."""

from __future__ import annotations

from typing import Any

from prefect import task

from mergeline.stages import importance
from tasks._results import PERSIST
from tasks._stage import RunHandle, stage_cache, run_stage


@task(name="compute-importance", cache_policy=stage_cache("importance", "finetune.max_length",
                                                                 "finetune.batch_size", "work_dir"), **PERSIST,
      task_run_name="compute-importance-{task}")
def compute_importance(params: dict[str, Any], task: str, base: dict[str, Any], checkpoint: dict[str, Any],
                       vector: dict[str, Any], data: dict[str, Any], run: RunHandle) -> dict[str, Any]:
    return run_stage("compute-importance", task, params, run,
                     lambda ctx: importance.compute_importance(ctx, task, base, checkpoint, vector, data),
                     {"task": task, **params["importance"]})


@task(name="vector-diagnostics", cache_policy=stage_cache("work_dir"), **PERSIST)
def vector_diagnostics(params: dict[str, Any], vectors: dict[str, dict[str, Any]], run: RunHandle) -> dict[str, Any]:
    def body(ctx):  # type: ignore[no-untyped-def]
        record = importance.vector_diagnostics(ctx, vectors)
        _log_plot(ctx, record.get("plot"))
        return record

    return run_stage("compute-importance", "vector-diagnostics", params, run, body)


def _log_plot(ctx, plot: str | None) -> None:  # type: ignore[no-untyped-def]
    if plot and ctx.log is not None:
        import mlflow

        mlflow.log_artifact(str(ctx.root / plot), artifact_path="plots")
