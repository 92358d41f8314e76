"""Where the pooled calls of an experiment run: a Prefect work pool (see prefect.yaml), or in-process."""

from __future__ import annotations

from flows.deployments import STEP_DEPLOYMENTS, PoolCalls, check_deployment, pool_from_env
from mergeline.params import ExperimentParams
from tasks._stage import RunHandle


def fanout_from_env(params: ExperimentParams, run: RunHandle) -> PoolCalls | None:
    """A :class:`flows.deployments.PoolCalls` when ``MERGELINE_WORK_POOL`` names a pool (and
    ``PREFECT_API_URL`` a server: else bad input), None to run every call in this process."""
    pool = pool_from_env()
    if pool is None:
        return None
    for deployment in STEP_DEPLOYMENTS.values():  # before any stage runs, not after the data is ready
        check_deployment(deployment, pool)
    return PoolCalls(params, run, pool)
