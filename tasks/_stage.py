"""What every stage task shares: a nested MLflow run, progress to the Prefect logger, caching.

Caching: a task's cache key is the hash of its inputs (minus the run-specific ``run`` handle) and of
its source (``INPUTS + TASK_SOURCE``). Inputs are the params and the records of upstream stages,
which carry sha256 of what they point at, so the key is content-addressed. Results are persisted
under ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``, so a new process (a re-run, or a resume after a kill)
finds them: an unchanged experiment recomputes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.logging import get_run_logger

from mergeline.params import ExperimentParams
from mergeline.stages.common import StageContext

STAGE_CACHE = (INPUTS - "run") + TASK_SOURCE


@dataclass(frozen=True)
class RunHandle:
    """Per-run context passed to tasks; excluded from cache keys."""

    root: str
    device: str
    parent_run_id: str | None = None


def _logger_progress() -> Callable[[str], None]:
    logger = get_run_logger()

    def progress(message: str) -> None:
        logger.info(message)

    return progress


def run_stage(stage: str, key: str, params: dict[str, Any], run: RunHandle,
              body: Callable[[StageContext], dict[str, Any]], mlflow_params: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Run ``body`` inside a nested MLflow run named ``stage:key``; return its record plus the run id."""
    ctx = StageContext(ExperimentParams.model_validate(params), Path(run.root), run.device,
                       progress=_logger_progress())
    if run.parent_run_id is None or os.environ.get("MERGELINE_NO_MLFLOW"):
        record = body(ctx)
        return record
    import mlflow

    from mergeline.tracking import log_params_flat

    with mlflow.start_run(run_name=f"{stage}:{key}", nested=True, parent_run_id=run.parent_run_id) as active:
        mlflow.set_tag("mergeline.stage", stage)
        if mlflow_params:
            log_params_flat(mlflow_params)
        ctx.log = lambda name, value, step=None: mlflow.log_metric(name, value, step=step)
        record = body(ctx)
        record["mlflow_run_id"] = active.info.run_id
        if "seconds" in record:
            mlflow.log_metric("stage_seconds", record["seconds"])
    return record


def expected_output_missing(run: RunHandle, *relative: str) -> bool:
    """True when a cached record would point at outputs that are gone (then the cache is refreshed)."""
    return any(not (Path(run.root) / r).exists() for r in relative)


__all__ = ["STAGE_CACHE", "RunHandle", "run_stage", "expected_output_missing"]
