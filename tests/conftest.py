"""Test-wide environment: offline, no telemetry, fresh Prefect/MLflow state per session.

Set at import time, before any test module imports Prefect or MLflow (they read settings at import).
A fresh results path per session matters: Prefect cache keys live there (STACK.md G5).
Also: ``--exhaustive`` (every robustness case; without it CI's representative subset).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mergeline-tests-"))

for key, value in {
    "PREFECT_HOME": str(_SESSION_DIR / "prefect"),
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(_SESSION_DIR / "prefect" / "results"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HOME": str(_SESSION_DIR / "hf"),
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


def session_dir() -> Path:
    """A temporary folder shared by the whole test session (removed by the OS's tmp cleaning)."""
    return _SESSION_DIR


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--exhaustive", action="store_true",
                     help="also run the robustness cases outside CI's representative subset (marker exhaustive)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--exhaustive``, cases marked ``exhaustive`` are deselected (reported as such, not
    skipped): CI runs the representative subset of tests/robustness/."""
    if config.getoption("--exhaustive"):
        return
    dropped = [item for item in items if item.get_closest_marker("exhaustive")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("exhaustive")]
