"""MLflow tracking and Model Registry: the only package in ``mergeline`` that imports MLflow.

Importing it sets the no-telemetry defaults before MLflow is imported (MLflow's ``DO_NOT_TRACK``
accepts only the string "true"); a user's own values win.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from mergeline.tracking.mlflow_setup import (  # noqa: E402
    configure_tracking,
    describe_run,
    killed_on_interrupt,
    log_artifacts,
    log_metrics,
    log_params,
    log_params_flat,
)

__all__ = ["configure_tracking", "describe_run", "killed_on_interrupt", "log_artifacts", "log_metrics", "log_params", "log_params_flat"]
