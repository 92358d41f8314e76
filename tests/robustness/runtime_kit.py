"""Helpers of the registry, cache and run cases: a registered tiny project, real ``mergeline run`` processes.

The registered project is ``tests/lineage_fixtures.py``'s (random tiny Llama, two task vectors, a
task-arithmetic merge) in one SQLite store per process; each case registers a version of its own.
Real runs use ``params/tiny.yaml`` in a project made by ``tests/integration/pipeline_project.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

from mergeline.lineage.record import Lineage
from mergeline.runlock import group_members
from mergeline.tracking import configure_tracking
from mergeline.tracking.registry import model_artifact_dir, register_merged_model, resolve_version
from tests.integration.pipeline_project import make_project, project_env, shared_tiny_base
from tests.lineage_fixtures import build_project
from tests.robustness.kit import ROOT
from tests.robustness.kit import cli as run_main  # noqa: F401 - ``mergeline ARGS`` in this process, for the cases


def lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@cache
def registered_project() -> tuple[Path, str]:
    """(root, tracking URI) of the fixture project, built once per process."""
    root = Path(tempfile.mkdtemp(prefix="mergeline-robust-runtime-"))
    atexit.register(shutil.rmtree, root, True)
    built = build_project(root)
    (root / "lineage.json").write_text(built.lineage.to_json())
    return root, configure_tracking(f"sqlite:///{root}/mlflow.db", "robust-runtime")


def register_own(name: str):  # type: ignore[no-untyped-def]
    """Register the fixture model as ``name@champion``; returns (spec, model version, stored folder)."""
    root, uri = registered_project()
    configure_tracking(uri, "robust-runtime")
    lineage = Lineage.model_validate_json((root / "lineage.json").read_text())
    register_merged_model(root / "merged", name, lineage, ["champion"], work_dir=root)
    version = resolve_version(f"{name}@champion")
    return f"{name}@champion", version, model_artifact_dir(version)


def store_args() -> list[str]:
    root, uri = registered_project()
    return ["--tracking-uri", uri, "--root", str(root)]


# --- real runs --------------------------------------------------------------------------------------

def new_project(folder: Path, name: str = "project") -> Path:
    return make_project(folder / name, shared_tiny_base()).resolve()


def env_for(root: Path, tracking_db: Path | None = None) -> dict[str, str]:
    env = project_env(root)
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", str(ROOT))
    env["OMP_NUM_THREADS"] = "1"
    if tracking_db is not None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tracking_db}"
    return env


def start_run(root: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=root,
                            env=env or env_for(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def run_statuses(db: Path) -> list[tuple[str, str]]:
    """(run name, status) of every MLflow run in a SQLite store, read without MLflow."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(db, timeout=2) as con:
            return con.execute("select name, status from runs order by start_time").fetchall()
    except sqlite3.Error:
        return []


def versions(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=2) as con:
            return con.execute("select count(*) from model_versions").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_for_stage(proc: subprocess.Popen[str], db: Path, prefix: str, limit: float = 600) -> bool:
    """Until a run named ``prefix…`` is RUNNING (True), or the run ended / time ran out (False)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if any(name.startswith(prefix) and status == "RUNNING" for name, status in run_statuses(db)):
            return True
        time.sleep(0.2)
    return False


def worker_group(root: Path) -> int | None:
    try:
        return json.loads((root / ".mergeline" / "run.json").read_text())["worker_pgid"]
    except (OSError, ValueError, KeyError):
        return None


def processes_left(root: Path, pgid: int | None) -> int:
    """Live processes of the run's worker group, or with ``root`` as their working directory."""
    left = set(group_members(pgid)) if pgid else set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == root:
                left.add(int(entry.name))
    return len(left)


def stop_outcome(root: Path, proc: subprocess.Popen[str], signum: int, whom: str = "supervisor") -> str:
    """Send ``signum``; the words for how the run ended, its MLflow runs, versions, processes."""
    pgid = worker_group(root)
    sent = time.monotonic()
    if whom == "supervisor":
        proc.send_signal(signum)
    else:
        os.killpg(proc.pid, signum)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return "still running 60 s after the signal"
    deadline = time.monotonic() + 30
    while processes_left(root, pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = time.monotonic() - sent
    statuses = {status for _, status in run_statuses(root / "mlflow.db")}
    words = [f"exit {proc.returncode}" if proc.returncode >= 0 else "killed",
             "stopped within 30 s" if seconds < 30 else f"stopped after {seconds:.0f} s",
             "runs RUNNING" if "RUNNING" in statuses else "no run RUNNING",
             f"{versions(root / 'mlflow.db')} versions", f"{processes_left(root, pgid)} processes left"]
    return ", ".join(words)
