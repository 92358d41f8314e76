"""Where the fine-tunes of an experiment run: a Prefect work pool (see prefect.yaml), or in-process."""

from __future__ import annotations

from typing import Any

from tasks._stage import RunHandle


def fanout_from_env(run: RunHandle) -> Any:
    """A :class:`flows.deployments.PoolFanout` when ``MERGELINE_WORK_POOL`` names a pool (and
    ``PREFECT_API_URL`` a server: else bad input), None to run the fine-tunes in this process."""
    from flows.deployments import FINETUNE_DEPLOYMENT, PoolFanout, check_deployment, pool_from_env

    pool = pool_from_env()
    if pool is None:
        return None
    check_deployment(FINETUNE_DEPLOYMENT, pool)  # before any stage runs, not after the data is ready
    return PoolFanout(run, pool)
