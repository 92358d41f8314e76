"""Fan-out of fine-tunes to a Prefect work pool (see prefect.yaml). Without a pool: in-process."""

from __future__ import annotations

import os
from typing import Any

from tasks._stage import RunHandle


def fanout_from_env(run: RunHandle) -> Any:
    """A fan-out helper when ``MERGELINE_WORK_POOL`` names a pool and a Prefect server is set, else None."""
    if not os.environ.get("MERGELINE_WORK_POOL"):
        return None
    from flows.deployments import PoolFanout

    return PoolFanout(run)
