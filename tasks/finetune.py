"""Tasks ``fine-tune`` and ``extract-vector``."""

from __future__ import annotations

from typing import Any

from prefect import task

from mergeline.stages import train
from tasks._stage import RunHandle, stage_cache, run_stage


@task(name="fine-tune", cache_policy=stage_cache("finetune", "talos", "work_dir", "device"), persist_result=True, task_run_name="fine-tune-{task}-{mode}")
def finetune(params: dict[str, Any], task: str, mode: str, base: dict[str, Any], data: dict[str, Any],
             run: RunHandle) -> dict[str, Any]:
    logged = {"task": task, "mode": mode, **params["finetune"]} | ({"talos": params["talos"]} if mode == "talos" else {})
    return run_stage("fine-tune", f"{task}-{mode}", params, run,
                     lambda ctx: train.finetune(ctx, task, mode, base, data), logged)


@task(name="extract-vector", cache_policy=stage_cache("work_dir"), persist_result=True,
      task_run_name="extract-vector-{checkpoint[task]}")
def extract_vector(params: dict[str, Any], base: dict[str, Any], checkpoint: dict[str, Any],
                   run: RunHandle) -> dict[str, Any]:
    return run_stage("extract-vector", f"{checkpoint['task']}-{checkpoint['mode']}", params, run,
                     lambda ctx: train.extract_vector(ctx, base, checkpoint))
