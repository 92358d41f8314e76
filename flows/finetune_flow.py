"""Flow ``mergeline-finetune``: ONE fine-tune, as its own flow run on a GPU worker of the pool.

The pipeline (flows/deployments.py: PoolFanout) creates one run of this deployment per task and
mode and reads the record back from the run's persisted result. The work is the same cached
``fine-tune`` task as in-process, so a pooled and an in-process run share cache entries and
return the same records.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from mergeline.env import configure_offline_defaults
from tasks._results import PERSIST

configure_offline_defaults()


@flow(name="mergeline-finetune", **PERSIST, log_prints=True)
def finetune_flow(params: dict[str, Any], task: str, mode: str, base: dict[str, Any], data: dict[str, Any],
                  root: str, parent_run_id: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Fine-tune the base on ``task`` (``mode``: full, talos or lora) on this worker's device.

    The device is resolved here, not by the pipeline: this worker's GPU (``CUDA_VISIBLE_DEVICES``)
    is what counts. ``root`` is the submitting run's project folder; the checkpoint goes to the
    ``work_dir`` of this worker's project folder, and travels through MLflow when that is another
    folder (flows/pool_transfer.py).
    """
    from pathlib import Path

    from flows.pipeline import _call, load_params_from_dict
    from flows.pool_transfer import fetch_inputs, share_result, worker_root
    from mergeline.stages.common import resolve_device
    from mergeline.stages.train import checkpoint_name
    from tasks import finetune as finetune_tasks
    from tasks._stage import RunHandle

    p = load_params_from_dict(params)
    if parent_run_id is not None:
        from mergeline.tracking import configure_tracking

        # The nested run must live in the parent's store and experiment (MLflow checks both).
        configure_tracking(tracking_uri, experiment=p.experiment)
    here, transfer = worker_root(root)
    run = RunHandle(here, resolve_device(p.device), parent_run_id)
    print(f"fine-tune {task}:{mode} on {run.device} in {run.root}" + (" (files through MLflow)" if transfer else ""))
    if transfer:
        fetch_inputs([base, data], here, parent_run_id)
    record = _call(finetune_tasks.finetune, [f"{p.work_dir}/checkpoints/{checkpoint_name(task, mode)}"], run,
                   params, task, mode, base, data)
    if transfer:
        share_result(record, here, parent_run_id)
    return record
