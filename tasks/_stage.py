"""What every step's Prefect task shares: its cache key, a nested MLflow run, progress to the logger.

Caching: a call's cache key is the hash of the step's name, the source of its library function,
the params sections the step reads (its ``reads`` in the stage table, nothing else:
``--set merge.lambda=0.5`` re-merges and re-evaluates but never re-fine-tunes) and its inputs,
which are records of upstream stages carrying sha256 of what they point at, so the key is
content-addressed. The run-specific ``run`` handle and the call's label are left out. Results are
persisted under ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``, so a new process (a re-run, or a resume
after a kill) finds them: an unchanged experiment recomputes nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.logging import get_run_logger
from prefect.utilities.hashing import hash_objects

from mergeline.params import ExperimentParams
from mergeline.pipeline.records import encode
from mergeline.pipeline.steps import Step
from mergeline.pipeline.table import stage_of
from mergeline.stages.common import StageContext


def scoped(params: ExperimentParams | dict[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """``{section: value}`` of the dotted ``sections`` of ``params``."""
    tree = params.model_dump(mode="json", by_alias=True) if isinstance(params, ExperimentParams) else params
    return {section: _dig(tree, section) for section in sections}


def _dig(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@dataclass
class StepCache(CachePolicy):
    """Key of one call of ``step``: the step, its function's source, the params it reads, its inputs."""

    step_name: str = ""
    sections: tuple[str, ...] = ()
    source_sha256: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return hash_objects({"step": self.step_name, "source": self.source_sha256,
                             "params": scoped(inputs["params"], self.sections), "args": encode(inputs["args"])},
                            raise_on_failure=True)


def step_cache(step: Step) -> StepCache:
    source = hashlib.sha256(inspect.getsource(step.fn).encode()).hexdigest()
    return StepCache(step_name=step.name, sections=step.reads, source_sha256=source)


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


def run_step(step: Step, params: ExperimentParams, label: str, args: tuple[Any, ...], run: RunHandle) -> Any:
    """One call of ``step`` inside a nested MLflow run named ``step:label``; its record, with the run id.

    The run's params are what the call reports it used (``StageContext.used``), so MLflow shows the
    values the stage ran with; its metrics are the call's own and ``stage_seconds``.
    """
    ctx = StageContext(params, Path(run.root), run.device, progress=_logger_progress())
    if run.parent_run_id is None or os.environ.get("MERGELINE_NO_MLFLOW"):
        return step.fn(ctx, *args)
    import mlflow

    from mergeline.tracking import killed_on_interrupt, log_artifacts, log_metrics, log_params_flat

    with mlflow.start_run(run_name=f"{step.name}:{label}", nested=True, parent_run_id=run.parent_run_id) as active, \
            killed_on_interrupt():
        run_id = active.info.run_id
        mlflow.set_tags({"mergeline.stage": stage_of(step).name, "mergeline.step": step.name})
        ctx.log = lambda name, value, at=None: log_metrics({name: value}, step=at, run_id=run_id)
        ctx.log_params = lambda values: log_params_flat(values, run_id=run_id)
        ctx.log_artifact = lambda path, folder: log_artifacts(path, folder, run_id=run_id)
        record = step.fn(ctx, *args)
        log_metrics({"stage_seconds": record.seconds}, run_id=run_id)
    return replace(record, mlflow_run_id=run_id)


def expected_output_missing(root: str, *relative: str) -> bool:
    """True when a cached record would point at outputs that are gone (then the cache is refreshed)."""
    return any(not (Path(root) / r).exists() for r in relative)


__all__ = ["RunHandle", "StepCache", "expected_output_missing", "run_step", "scoped", "step_cache"]
