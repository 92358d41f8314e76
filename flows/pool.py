"""Which Prefect work pool a run fans out to (``MERGELINE_WORK_POOL``), checked before anything starts.

Kept apart from ``flows/deployments.py`` so the check costs no Prefect import when no pool is named:
importing Prefect makes its home folder, and a run refused up front must leave the project untouched.
"""

from __future__ import annotations

import os

from mergeline.errors import MergelineError

POOL_ENV = "MERGELINE_WORK_POOL"


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
