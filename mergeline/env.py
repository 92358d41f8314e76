"""Process-wide defaults that keep mergeline offline and free of telemetry (STACK.md §7, G10).

``setdefault`` only: a user's explicit setting (e.g. HF_HUB_OFFLINE=0 to allow downloads) wins.
Called first thing by the CLI, before transformers/datasets/Prefect/MLflow are imported, because
those read their settings at import time.
"""

from __future__ import annotations

import os

from mergeline.errors import MergelineError

OFFLINE_DEFAULTS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DO_NOT_TRACK": "true",  # MLflow accepts only "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def configure_offline_defaults() -> dict[str, str]:
    """Set every unset variable of :data:`OFFLINE_DEFAULTS`; return the ones this call set."""
    changed = {}
    for key, value in OFFLINE_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            changed[key] = value
    return changed


WORKERS_ENV = "MERGELINE_MAX_WORKERS"


def max_workers() -> int:
    """How many independent stage calls run at once: ``MERGELINE_MAX_WORKERS``, else up to 4 (the CPU
    cores, if fewer). A few concurrent calls keep one GPU busy while others load weights, write files
    or set lm-eval up; many more would compete for its memory. 1 runs every call after the other."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return max(1, min(4, os.cpu_count() or 1))
    if not raw.isdigit() or int(raw) < 1:
        raise MergelineError(f"{WORKERS_ENV}={raw!r}: expected a whole number of calls, at least 1")
    return int(raw)
