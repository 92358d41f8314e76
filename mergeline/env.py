"""Process-wide defaults that keep mergeline offline and free of telemetry (STACK.md §7, G10), and
the environment of the commands that run the Prefect flow (:func:`configure_pipeline_env`).

``setdefault`` only: a user's explicit setting (e.g. HF_HUB_OFFLINE=0 to allow downloads) wins.
Called first thing by the CLI, before transformers/datasets/Prefect/MLflow are imported, because
those read their settings at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

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


# More task-run events than a run at the sweep cap sends, and a day: see configure_pipeline_env.
RECORDER_BATCH = 1_000_000
RECORDER_FLUSH_SECONDS = 86_400


def configure_pipeline_env(root: Path) -> None:
    """Environment for what runs the Prefect flow: project-local state under ``root/.prefect``,
    nothing phoned home. Set before Prefect is imported (it reads its settings at import);
    ``setdefault`` everywhere, so a user's own PREFECT_API_URL or MLFLOW_TRACKING_URI wins."""
    state = root / ".prefect"
    os.environ.setdefault("PREFECT_HOME", str(state))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(state / "results"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    # The temporary server records task runs from the events the flow sends, by default one database
    # write per event as it arrives. A cached run sends a hundred events in a second, and the server
    # is stopped when the run exits while it still writes them: its shutdown cancels the write, logs
    # ERROR with tracebacks and loses those records. Kept in memory and written once, by the
    # shutdown itself (which waits for that write), they are all recorded and nothing is cancelled.
    os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", str(RECORDER_BATCH))
    os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", str(RECORDER_FLUSH_SECONDS))
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Third-party progress bars (lm-eval, datasets, transformers) drown the per-stage progress lines.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
