"""Ctrl-C and a second run in the same folder, on a real ``mergeline run`` (tiny params): real
processes, the real tracking store and the process table afterwards."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mergeline.runlock import group_members
from tests.integration.pipeline_project import MERGELINE, make_project, project_env, run_cli, shared_tiny_base

pytestmark = pytest.mark.slow


def _run_status(db: Path, prefix: str) -> str | None:
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute("select status from runs where name like ? order by start_time desc",
                              (f"{prefix}%",)).fetchone()
    except sqlite3.Error:
        return None  # the schema is still being created
    return row[0] if row else None


def _processes_in(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == root:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_the_run_and_a_second_run_in_the_folder_is_refused(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    root = make_project(tmp_path / "project", shared_tiny_base()).resolve()
    db = root / "mlflow.db"
    proc = subprocess.Popen([*MERGELINE, "run", "--params", "params.yaml"], cwd=root, env=project_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # The flow has started: Prefect's server runs and MLflow holds the experiment's parent run.
        while _run_status(db, "pipeline:") is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and _run_status(db, "pipeline:") == "RUNNING"
        second = run_cli(root, "run", "--params", "params.yaml", timeout=120)
        assert second.returncode == 2, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"in use by another mergeline run (pid {proc.pid} on" in line and "run.lock" in line
        # Another project folder naming this run's work folder: refused too, before anything starts.
        other = tmp_path / "other"
        other.mkdir()
        params = yaml.safe_load((root / "params.yaml").read_text())
        (other / "params.yaml").write_text(yaml.safe_dump({**params, "work_dir": str(root / params["work_dir"])}))
        third = run_cli(other, "run", "--params", "params.yaml", timeout=120)
        assert third.returncode == 2, third.stderr[-3000:]
        [line] = third.stderr.strip().splitlines()
        assert f"this work folder is in use by another mergeline run (pid {proc.pid} on" in line, line
        assert f"project {root})" in line and not (other / ".prefect").exists()
        pgid = json.loads((root / ".mergeline" / "run.json").read_text())["worker_pgid"]
        assert len(group_members(pgid)) >= 2  # the pipeline worker and Prefect's server

        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and time.monotonic() - sent < 30, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: stopped by SIGINT"), err[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert group_members(pgid) == [] and _processes_in(root) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status in ("FINISHED", "KILLED") for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert [r.info.status for r in runs if r.info.run_name.startswith("pipeline:")] == ["KILLED"]
    assert client.search_registered_models() == [] or client.search_model_versions("name = 'mergeline-tiny'") == []
