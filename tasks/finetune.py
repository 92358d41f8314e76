"""Tasks ``fine-tune``, ``import-task-model`` and ``extract-vector``."""

from __future__ import annotations

from typing import Any

from prefect import task

from mergeline.stages import train
from tasks._results import PERSIST
from tasks._stage import RunHandle, stage_cache, run_stage


@task(name="fine-tune", cache_policy=stage_cache("finetune", "talos", "lora", "work_dir", "device"), **PERSIST, task_run_name="fine-tune-{task}-{mode}")
def finetune(params: dict[str, Any], task: str, mode: str, base: dict[str, Any], data: dict[str, Any],
             run: RunHandle) -> dict[str, Any]:
    logged = {"task": task, "mode": mode, **params["finetune"]} | ({mode: params[mode]} if mode in ("talos", "lora") else {})
    return run_stage("fine-tune", f"{task}-{mode}", params, run,
                     lambda ctx: train.finetune(ctx, task, mode, base, data), logged)


@task(name="import-task-model", cache_policy=stage_cache("tasks", "work_dir"), **PERSIST,
      task_run_name="import-task-model-{task}")
def import_task_model(params: dict[str, Any], task: str, base: dict[str, Any], given_sha256: str,
                      run: RunHandle) -> dict[str, Any]:
    """``given_sha256`` (the given folder's content hash) is in the cache key: an edited model re-imports."""
    return run_stage("import-task-model", task, params, run, lambda ctx: train.import_task_model(ctx, task, base))


@task(name="extract-vector", cache_policy=stage_cache("work_dir"), **PERSIST,
      task_run_name="extract-vector-{checkpoint[task]}")
def extract_vector(params: dict[str, Any], base: dict[str, Any], checkpoint: dict[str, Any],
                   run: RunHandle) -> dict[str, Any]:
    return run_stage("extract-vector", f"{checkpoint['task']}-{checkpoint['mode']}", params, run,
                     lambda ctx: train.extract_vector(ctx, base, checkpoint))
