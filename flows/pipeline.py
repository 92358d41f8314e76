"""The experiment flow: the stage table (``mergeline.pipeline.table``) walked by Prefect, then register.

One Prefect flow run is one experiment and one MLflow parent run; each call of a stage is a Prefect
task run and a nested MLflow run. Independent calls (the fine-tunes, the merges, each round of
evaluations) are submitted together to the flow's ``ThreadPoolTaskRunner``, so one host overlaps
them; ``MERGELINE_MAX_WORKERS`` caps how many run at once (``mergeline.env.max_workers``). Run it
with ``mergeline run [--params FILE] [--set key=value ...]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.experiment_run import start_experiment_run
from flows.fanout import fanout_from_env
from flows.register import finish_experiment
from mergeline.env import max_workers
from mergeline.errors import MergelineError
from mergeline.params import load_params
from mergeline.pipeline.report import results_table
from mergeline.pipeline.table import STAGE_NAMES
from mergeline.pipeline.walker import LAST_WALKED, walk
from mergeline.stages.common import StageContext, resolve_device
from mergeline.tracking import configure_tracking
from tasks._results import PERSIST
from tasks._stage import RunHandle
from tasks.assets import results_artifact
from tasks.executor import PrefectExecutor

@flow(name="mergeline-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=max_workers()),
      **PERSIST)  # sweeps read the result back
def pipeline(params_file: str = "params/default.yaml", overrides: list[str] | None = None,
             root: str | None = None, until: str = "register") -> dict[str, Any]:
    """One experiment, up to stage ``until``. Parameters are validated before any work starts (bad input: exit 2)."""
    if until not in STAGE_NAMES:
        raise MergelineError(f"until: unknown stage {until!r}; stages: {', '.join(STAGE_NAMES)}")
    params = load_params(params_file, overrides)
    root_path = Path(root or os.getcwd())
    device = resolve_device(params.device)
    logger = get_run_logger()
    logger.info(f"experiment {params.experiment}: tasks={params.task_names} methods={list(params.merge.methods)} "
                f"device={device}")
    configure_tracking(experiment=params.experiment)
    with start_experiment_run(params, params_file, root_path) as parent:
        run = RunHandle(str(root_path), device, parent.info.run_id)
        executor = PrefectExecutor(params, run, fanout_from_env(params, run))
        walked = min(until, LAST_WALKED, key=STAGE_NAMES.index)
        exp = walk(StageContext(params, root_path, device), executor, until=walked)
        if until != "register":
            return {"stage": until}
        summary = finish_experiment(params, params_file, exp, run, str(flow_run.id) if flow_run.id else None)
    summary["table"] = results_table(params, exp)
    results_artifact(params.experiment, summary["table"])
    logger.info("results\n" + summary["table"])
    return summary
