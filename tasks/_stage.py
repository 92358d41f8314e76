"""What every stage task shares: a nested MLflow run, progress to the Prefect logger, caching.

Caching: a task's cache key is the hash of its inputs and of its source (``TASK_SOURCE``). Of the
params, only the sections the stage reads count (:class:`ScopedInputs`): ``--set merge.lambda=0.5``
re-merges and re-evaluates but never re-fine-tunes. The other inputs are records of upstream stages,
which carry sha256 of what they point at, so the key is content-addressed. The run-specific ``run``
handle is left out. Results are persisted under ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``, so a new
process (a re-run, or a resume after a kill) finds them: an unchanged experiment recomputes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.logging import get_run_logger
from prefect.utilities.hashing import hash_objects

from mergeline.params import ExperimentParams
from mergeline.stages.common import StageContext



@dataclass
class ScopedInputs(CachePolicy):
    """Hash of a task's inputs in which ``params`` is cut down to ``sections`` (dotted keys)."""

    sections: tuple[str, ...] = ()

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        scoped: dict[str, Any] = {k: v for k, v in inputs.items() if k not in ("params", "run")}
        params = inputs.get("params") or {}
        scoped["params"] = {section: _dig(params, section) for section in self.sections}
        return hash_objects(scoped, raise_on_failure=True)


def _dig(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def stage_cache(*sections: str) -> CachePolicy:
    """Cache policy of a stage that reads the given params sections."""
    return ScopedInputs(sections=sections) + TASK_SOURCE


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

    from mergeline.tracking import killed_on_interrupt, log_params_flat

    with mlflow.start_run(run_name=f"{stage}:{key}", nested=True, parent_run_id=run.parent_run_id) as active, \
            killed_on_interrupt():
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


__all__ = ["stage_cache", "RunHandle", "run_stage", "expected_output_missing"]
