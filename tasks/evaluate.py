"""Task ``evaluate``: lm-eval on the task and control sets, for one model and one split."""

from __future__ import annotations

from typing import Any

from prefect import task

from mergeline.stages import evaluate as stage
from mergeline.stages.merge import ensure_merged
from tasks._results import PERSIST
from tasks._stage import RunHandle, stage_cache, run_stage


@task(name="evaluate", cache_policy=stage_cache("evaluate", "tasks", "control", "data_dir"), **PERSIST, task_run_name="evaluate-{name}-{split}")
def evaluate(params: dict[str, Any], name: str, model: dict[str, Any], split: str, data: dict[str, Any],
             run: RunHandle, sets: list[str] | None = None) -> dict[str, Any]:
    # ``model`` is the upstream record (path + sha256), so the cache key follows the weights' content.
    def body(ctx):  # type: ignore[no-untyped-def]
        if "config" in model:  # a merged variant: its folder may have been pruned after an earlier scoring
            ensure_merged(ctx, model)
        record = stage.evaluate(ctx, name, model["path"], split, data, sets)
        for task_name, acc in record["metrics"].items():
            ctx.metric(f"{split}/acc/{task_name}", acc)
        return record

    return run_stage("evaluate", f"{name}-{split}", params, run, body, {"model": name, "split": split})
