"""Fan-out onto a Prefect work pool: flow runs of the deployments in ``prefect.yaml``.

When ``MERGELINE_WORK_POOL`` names a pool and ``PREFECT_API_URL`` points at a Prefect server, the
fine-tunes of an experiment (and the points of a sweep) become separate flow runs of a deployment,
created all at once with ``run_deployment(timeout=0)`` and then awaited. Which worker runs what,
and how many runs a GPU takes at a time, is Prefect's business (one worker per GPU, ``--limit 1``:
docs/gpu-workers.md); nothing here queues or schedules.

Records come back as the flow runs' persisted results. With local result storage the result's
key is an absolute path, so every process that waits on it must see the same result folder
(``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` on one machine, or a shared mount / object-store block for a team).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from mergeline.errors import MergelineError
from mergeline.stages.train import checkpoint_name
from flows.pool_transfer import pooled_result, share_inputs
from tasks._stage import RunHandle

FINETUNE_DEPLOYMENT = "mergeline-finetune/mergeline-finetune"
PIPELINE_DEPLOYMENT = "mergeline-pipeline/mergeline-pipeline"
POOL_ENV = "MERGELINE_WORK_POOL"
# How often to ask the server whether the submitted runs have finished; a run takes minutes.
POLL_SECONDS = float(os.environ.get("MERGELINE_FANOUT_POLL_SECONDS", "2"))


def pool_from_env() -> str | None:
    """The work pool to fan out to, or None to run in-process.

    A pool without a server would wait forever on runs no worker can see, so that is bad input.
    """
    pool = os.environ.get(POOL_ENV, "").strip()
    if not pool:
        return None
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise MergelineError(f"{POOL_ENV}={pool} needs PREFECT_API_URL (a Prefect server with workers on the pool)")
    return pool


def check_deployment(name: str, pool: str) -> None:
    """The deployment exists on the server and runs on ``pool`` (else one line saying what to do)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise MergelineError(f"deployment {name!r} not found on the Prefect server: run "
                                 "`prefect --no-prompt deploy --all` in the repo (prefect.yaml)") from None
    if deployment.work_pool_name != pool:
        raise MergelineError(f"{POOL_ENV}={pool} but deployment {name!r} runs on work pool "
                             f"{deployment.work_pool_name!r}")


def submit(name: str, parameters: dict[str, Any], run_name: str) -> Any:
    """Create one flow run of deployment ``name`` and return it at once (``timeout=0``)."""
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, flow_run_name=run_name, timeout=0)


def await_results(flow_runs: Mapping[str, Any], poll_seconds: float = POLL_SECONDS, root: str | None = None,
                  parent_run_id: str | None = None) -> dict[str, Any]:
    """Wait for every run to end; return each one's result by key (with ``root`` and ``parent_run_id``,
    results a worker shared through MLflow come from there, their files into ``root``).

    The first run that ends in anything but Completed raises at once, naming it; runs still going
    are left to finish, and their task results are cached for the resumed experiment.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    keys = {fr.id: key for key, fr in flow_runs.items()}
    finished: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while len(finished) < len(keys):
            pending = [run_id for run_id, key in keys.items() if key not in finished]
            for flow_run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending))):
                if flow_run.state is None or not flow_run.state.is_final():
                    continue
                key = keys[flow_run.id]
                if not flow_run.state.is_completed():
                    raise RuntimeError(f"flow run {flow_run.name!r} ({flow_run.id}) for {key} ended "
                                       f"{flow_run.state.type.value}: {flow_run.state.message or ''}".strip())
                finished[key] = pooled_result(flow_run, root, parent_run_id)
            if len(finished) < len(keys):
                time.sleep(poll_seconds)
    return {key: finished[key] for key in flow_runs}


class PoolFanout:
    """Fine-tunes as flow runs of ``mergeline-finetune`` on a work pool (see ``flows/pipeline.py``)."""

    def __init__(self, run: RunHandle, pool: str, deployment: str = FINETUNE_DEPLOYMENT) -> None:
        self.run = run
        self.pool = pool
        self.deployment = deployment

    def finetune_all(self, params: dict[str, Any], jobs: list[tuple[str, str]], base: dict[str, Any],
                     data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """``{"task:mode": record}`` for every job: the same records an in-process run returns."""
        import mlflow

        from prefect import get_run_logger

        # The workers log into the same store and experiment as this run, under its parent run;
        # ``root`` is where outputs go, so workers must see the project at this same path.
        shared = {"params": params, "base": base, "data": data, "root": self.run.root,
                  "parent_run_id": self.run.parent_run_id, "tracking_uri": mlflow.get_tracking_uri()}
        share_inputs([base, data], self.run.root, self.run.parent_run_id)
        flow_runs = {
            f"{task}:{mode}": submit(self.deployment, {**shared, "task": task, "mode": mode},
                                     f"fine-tune-{checkpoint_name(task, mode)}")
            for task, mode in jobs
        }
        get_run_logger().info(f"fan-out: {len(flow_runs)} fine-tunes submitted to work pool {self.pool!r}")
        return await_results(flow_runs, root=self.run.root, parent_run_id=self.run.parent_run_id)


__all__ = ["FINETUNE_DEPLOYMENT", "PIPELINE_DEPLOYMENT", "PoolFanout", "await_results", "check_deployment",
           "pool_from_env", "submit"]
