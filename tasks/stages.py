"""The Prefect tasks of the pipeline, one per step of the stage table (``mergeline.pipeline.table``).

Each task's name is the step's, its runs are named ``<step>-<label>`` (``fine-tune-news-talos``), its
cache key is :class:`tasks._stage.StepCache` over exactly the params sections the step reads, and its
result is the step's record as plain JSON (:data:`tasks._results.PERSIST`).
"""

from __future__ import annotations

from typing import Any

from prefect import Task, task

from mergeline.params import ExperimentParams
from mergeline.pipeline.records import encode
from mergeline.pipeline.steps import Step
from mergeline.pipeline.table import STEPS
from tasks._results import PERSIST
from tasks._stage import RunHandle, run_step, step_cache


def _task_of(step: Step) -> Task[..., dict[str, Any]]:
    def run_call(params: ExperimentParams, label: str, args: tuple[Any, ...], run: RunHandle) -> dict[str, Any]:
        return encode(run_step(step, params, label, args, run))

    run_call.__name__ = run_call.__qualname__ = step.name.replace("-", "_")
    return task(name=step.name, cache_policy=step_cache(step), task_run_name=f"{step.name}-{{label}}",
                **PERSIST)(run_call)


TASKS: dict[str, Task[..., dict[str, Any]]] = {name: _task_of(step) for name, step in STEPS.items()}

__all__ = ["TASKS"]
