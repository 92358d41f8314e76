"""Fan-out onto a Prefect work pool: flow runs of the deployments in ``prefect.yaml``.

When ``MERGELINE_WORK_POOL`` names a pool and ``PREFECT_API_URL`` points at a Prefect server, the
fine-tunes and the evaluations of merged variants of an experiment (and the points of a sweep)
become separate flow runs of a deployment,
created all at once with ``run_deployment(timeout=0)`` and then awaited. Which worker runs what,
and how many runs a GPU takes at a time, is Prefect's business (one worker per GPU, ``--limit 1``:
docs/scale-and-gpu.md); nothing here queues or schedules.

Records come back as the flow runs' persisted results. With local result storage the result's
key is an absolute path, so every process that waits on it must see the same result folder
(``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` on one machine, or a shared mount / object-store block for a team).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mergeline.errors import MergelineError
from mergeline.params import ExperimentParams
from mergeline.pipeline.records import encode
from mergeline.pipeline.steps import Call
from mergeline.pipeline.table import STEPS
from flows.pool import POOL_ENV, pool_from_env
from flows.pool_transfer import pooled_result, share_inputs
from tasks._stage import RunHandle

PIPELINE_DEPLOYMENT = "mergeline-pipeline/mergeline-pipeline"
# The steps whose calls fan out to the pool (their table entry says ``pool``), each a deployment of its own.
STEP_DEPLOYMENTS = {name: f"mergeline-{name.replace('-', '')}/mergeline-{name.replace('-', '')}"
                    for name, step in STEPS.items() if step.pool}
# How often to ask the server whether the submitted runs have finished; a run takes minutes.
POLL_SECONDS = float(os.environ.get("MERGELINE_FANOUT_POLL_SECONDS", "2"))


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


class PoolCalls:
    """Calls of the steps with a deployment (fine-tunes, evaluations) as flow runs on a work pool.

    Each call is one run of its step's deployment (``mergeline-<step>``, flows/stage_flows.py),
    named ``<step>-<label>``; all are created before any is awaited. The workers log into the same
    MLflow store and experiment as this run, under its parent run, and write under ``root`` when
    they see it, else in their own folders with the files going through MLflow (flows/pool_transfer.py).
    """

    def __init__(self, params: ExperimentParams, run: RunHandle, pool: str,
                 deployments: Mapping[str, str] = STEP_DEPLOYMENTS) -> None:
        self.params = params.model_dump(mode="json", by_alias=True)
        self.run = run
        self.pool = pool
        self.deployments = dict(deployments)

    def takes(self, call: Call) -> bool:
        return call.step.name in self.deployments

    def submit(self, calls: Sequence[Call]) -> dict[str, Any]:
        import mlflow

        from prefect import get_run_logger

        shared = {"params": self.params, "root": self.run.root, "parent_run_id": self.run.parent_run_id,
                  "tracking_uri": mlflow.get_tracking_uri()}
        share_inputs([encode(call.args) for call in calls], self.run.root, self.run.parent_run_id)
        runs = {f"{call.step.name}-{call.label}": submit(
                    self.deployments[call.step.name],
                    {**shared, "label": call.label, "args": encode(call.args), "outputs": list(call.outputs)},
                    f"{call.step.name}-{call.label}")
                for call in calls}
        get_run_logger().info(f"fan-out: {len(runs)} calls submitted to work pool {self.pool!r}")
        return runs

    def gather(self, submitted: dict[str, Any]) -> list[dict[str, Any]]:
        done = await_results(submitted, root=self.run.root, parent_run_id=self.run.parent_run_id)
        return [done[key] for key in submitted]


__all__ = ["PIPELINE_DEPLOYMENT", "POOL_ENV", "PoolCalls", "STEP_DEPLOYMENTS", "await_results", "check_deployment",
           "pool_from_env", "submit"]
