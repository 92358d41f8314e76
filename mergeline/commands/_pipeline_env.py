"""Environment for commands that run the Prefect flow: project-local state, nothing phoned home.

Set before Prefect is imported (Prefect reads settings at import). ``setdefault`` everywhere: a
user's own PREFECT_API_URL (a real server with GPU workers) or MLFLOW_TRACKING_URI wins.
"""

from __future__ import annotations

import os
from pathlib import Path


# More task-run events than a run at the sweep cap sends, and a day: see configure_pipeline_env.
RECORDER_BATCH = 1_000_000
RECORDER_FLUSH_SECONDS = 86_400


def configure_pipeline_env(root: Path) -> None:
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
