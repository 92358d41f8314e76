"""Tasks ``prepare-data`` and ``import-base``."""

from __future__ import annotations

from typing import Any

from prefect import task

from mergeline.stages import prepare
from tasks._results import PERSIST
from tasks._stage import RunHandle, stage_cache, run_stage


@task(name="prepare-data", cache_policy=stage_cache("data", "tasks", "control", "data_dir"), **PERSIST)
def prepare_data(params: dict[str, Any], sources: dict[str, str], run: RunHandle) -> dict[str, Any]:
    # ``sources`` (sha256 of the user data files) is only there to key the cache on their content.
    return run_stage("prepare-data", "all", params, run, prepare.prepare_data, params["data"])


@task(name="import-base", cache_policy=stage_cache("base_model", "work_dir"), **PERSIST)
def import_base(params: dict[str, Any], run: RunHandle) -> dict[str, Any]:
    return run_stage("import-base", params["base_model"], params, run, prepare.import_base,
                     {"base_model": params["base_model"]})
