"""The MLflow parent run of one experiment, tagged with everything needed to trace it back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mergeline.io.hashing import sha256_file
from mergeline.params import ExperimentParams


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit, dirty) of the checkout at ``root``; ("unknown", True) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def dvc_lock_sha256(root: Path) -> str:
    lock = root / "dvc.lock"
    return sha256_file(lock) if lock.exists() else "none"


def prefect_flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "none")


@contextmanager
def start_experiment_run(params: ExperimentParams, params_file: str, root: Path) -> Iterator[Any]:
    import mlflow

    from mergeline.runlock import current_owner
    from mergeline.tracking import killed_on_interrupt, log_params_flat
    from mergeline.tracking.orphans import OWNER_TAG

    commit, dirty = git_commit(root)
    owner = current_owner()
    with mlflow.start_run(run_name=f"pipeline:{params.experiment}",
                          tags={OWNER_TAG: owner} if owner else None) as parent, killed_on_interrupt():
        log_params_flat(params.model_dump(mode="json", by_alias=True))
        mlflow.set_tags({
            "mergeline.git_commit": commit, "mergeline.git_dirty": str(dirty),
            "mergeline.dvc_lock_sha256": dvc_lock_sha256(root), "mergeline.params_file": params_file,
            "mergeline.params_sha256": params.sha256(), "mergeline.prefect_flow_run_id": prefect_flow_run_id(),
        })
        yield parent
