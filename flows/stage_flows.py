"""Flows ``mergeline-finetune`` and ``mergeline-evaluate``: ONE call of a step, as its own flow run on a worker.

The pipeline (flows/deployments.py: PoolCalls) creates one run of the step's deployment per call
and reads the record back from the run's persisted result. The work is the same cached Prefect
task as in-process, so a pooled and an in-process call share cache entries and return the same
records. One flow per step that the stage table lets fan out to a pool (``pool=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow, flow

from flows.pool_transfer import fetch_inputs, share_result, worker_root
from mergeline.env import configure_offline_defaults
from mergeline.params import params_from_tree
from mergeline.pipeline.records import decode
from mergeline.pipeline.table import STEPS
from mergeline.stages.common import resolve_device
from mergeline.tracking import configure_tracking
from tasks._results import PERSIST
from tasks._stage import RunHandle, expected_output_missing
from tasks.assets import materializing
from tasks.stages import TASKS

configure_offline_defaults()


def _stage_flow(step_name: str) -> Flow[..., dict[str, Any]]:
    step = STEPS[step_name]

    def run_call(params: dict[str, Any], label: str, args: list[Any], root: str, outputs: list[str] | None = None,
                 parent_run_id: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
        """One call of the step on this worker's device (its GPU: ``CUDA_VISIBLE_DEVICES``), not the
        pipeline's. ``root`` is the submitting run's project folder; outputs go under the ``work_dir`` of
        this worker's project folder, which is that one on a shared disk."""
        p = params_from_tree(params, "flow parameter params")  # validated once in this process
        if parent_run_id is not None:
            # The nested run must live in the parent's store and experiment (MLflow checks both).
            configure_tracking(tracking_uri, experiment=p.experiment)
        here, transfer = worker_root(root)  # its own folder: files through MLflow (flows/pool_transfer.py)
        run = RunHandle(here, resolve_device(p.device), parent_run_id)
        inputs = tuple(decode(kind, value) for kind, value in zip(step.inputs, args))
        print(f"{step_name} {label} on {run.device} in {run.root}" + (" (files through MLflow)" if transfer else ""))
        if transfer:
            fetch_inputs(args, here, parent_run_id)
        task = TASKS[step_name]
        if expected_output_missing(run.root, *(outputs or [])):
            task = task.with_options(refresh_cache=True)
        record = materializing(task, p.experiment, outputs or [], args, group=[p.data_dir])(p, label, inputs, run)
        if transfer:
            share_result(record, here, parent_run_id, outputs or [])
        return record

    run_call.__name__ = run_call.__qualname__ = f"{step_name.replace('-', '_')}_flow"
    return flow(name=f"mergeline-{step_name.replace('-', '')}", log_prints=True, **PERSIST)(run_call)


finetune_flow = _stage_flow("fine-tune")
evaluate_flow = _stage_flow("evaluate")

__all__ = ["evaluate_flow", "finetune_flow"]
