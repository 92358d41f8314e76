"""Each robustness case runs in its own empty folder and leaves the process as it found it: the
working folder after each case, and the MLflow tracking URI (the lineage and registry cases point it
at their module's store) after each module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest


@pytest.fixture(autouse=True)
def restore_cwd() -> Iterator[None]:
    before = Path.cwd()
    yield
    os.chdir(before)


@pytest.fixture(scope="module", autouse=True)
def restore_tracking_uri() -> Iterator[None]:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before
