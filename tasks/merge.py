"""Task ``merge``: one merged variant (the flow maps it over the sweep)."""

from __future__ import annotations

from typing import Any

from prefect import task

from mergeline.stages import merge
from tasks._results import PERSIST
from tasks._stage import RunHandle, stage_cache, run_stage


@task(name="merge", cache_policy=stage_cache("work_dir", "merge.seed"), **PERSIST, task_run_name="merge-{variant[name]}")
def merge_variant(params: dict[str, Any], variant: dict[str, Any], config: dict[str, Any],
                  run: RunHandle) -> dict[str, Any]:
    logged = {"method": variant["method"], "lambda": variant["lambda"], "density": variant["density"],
              **{f"option.{k}": v for k, v in variant["options"].items()}}
    return run_stage("merge", variant["name"], params, run, lambda ctx: merge.merge_variant(ctx, variant, config),
                     logged)
