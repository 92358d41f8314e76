"""Robustness cases: signals and concurrent runs, on real ``mergeline run`` processes.

Runs use ``params/tiny.yaml`` in a project made by ``tests/integration/pipeline_project.py`` (a minute or
more each: those cases are ``slow``); the outcome is read from the tracking store and the process
table afterwards. Two projects naming one work folder are refused like two runs in one folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mergeline.runlock import Holder, RunLock, process_start
from mergeline.tracking import configure_tracking
from mergeline.tracking.orphans import OWNER_TAG
from tests.integration.pipeline_project import make_project, shared_tiny_base
from tests.robustness.kit import Case, params
from tests.robustness.runtime_kit import (
    env_for, lines, new_project, run_main, start_run, stop_outcome, versions, wait_for_stage,
)

def _signal_case(name: str, signum: int, stage: str, expected: str, whom: str = "supervisor") -> Case:
    """A real tiny ``mergeline run``, sent ``signum`` while ``stage`` runs (slow)."""
    def check(folder: Path) -> str:
        root = new_project(folder)
        proc = start_run(root)
        if not wait_for_stage(proc, root / "mlflow.db", stage):
            proc.kill()
            return f"never reached {stage} (exit {proc.wait()})"
        return stop_outcome(root, proc, signum, whom)
    return Case("signal", name, expected, check, slow=True)


def _beside_a_run(folder: Path, second_in: Callable[[Path], Path]
                  ) -> tuple[subprocess.Popen[str], subprocess.CompletedProcess[str] | None, str]:
    """Start a tiny run in ``folder/project``; once it runs, ``mergeline run`` in the folder that
    ``second_in(project)`` returns; then wait for the first. Returns (first, second or None, first's stderr)."""
    root = new_project(folder)
    first = start_run(root)
    try:
        if not wait_for_stage(first, root / "mlflow.db", "pipeline:"):
            return first, None, ""
        where = second_in(root)
        second = subprocess.run([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=where,
                                env=env_for(where), capture_output=True, text=True, timeout=300)
        first_err = first.communicate(timeout=1800)[1]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    return first, second, first_err


def _refusal(second: subprocess.CompletedProcess[str], first: subprocess.Popen[str]) -> str:
    named = f"pid {first.pid}" in second.stderr
    return f"second exit {second.returncode}, {len(lines(second.stderr))} line{', names holder' if named else ''}"


def _second_run_same_folder(folder: Path) -> str:
    first, second, first_err = _beside_a_run(folder, lambda root: root)
    if second is None:
        return "first run never started"
    root = folder / "project"
    return (f"{_refusal(second, first)}; first exit {first.returncode}, {versions(root / 'mlflow.db')} versions"
            + (f" {first_err[-200:]}" if first.returncode else ""))


def _other_project(root: Path) -> Path:
    """A second project folder whose params name ``root``'s work folder."""
    other = root.parent / "other"
    other.mkdir()
    settings = yaml.safe_load((root / "params.yaml").read_text())
    (other / "params.yaml").write_text(yaml.safe_dump({**settings, "work_dir": str(root / settings["work_dir"])}))
    return other


def _second_project_same_work_dir(folder: Path) -> str:
    """Project ``other`` whose params name the running project's work folder: refused at once."""
    first, second, _ = _beside_a_run(folder, _other_project)
    if second is None:
        return "first run never started"
    other = folder / "other"
    started = "nothing started" if not (other / ".prefect").exists() and not (other / "mlflow.db").exists() else "started"
    return f"{_refusal(second, first)}, {started}; first exit {first.returncode}"


def _two_folders_one_store(folder: Path) -> str:
    db = folder / "shared" / "mlflow.db"
    db.parent.mkdir()
    roots = [new_project(folder, "a"), new_project(folder, "b")]
    procs = [start_run(root, env_for(root, db)) for root in roots]
    codes = [proc.wait(timeout=3600) for proc in procs]
    verified = []
    for root in roots:
        check = subprocess.run([sys.executable, "-m", "mergeline", "lineage", "mergeline-tiny@champion", "--verify"],
                               cwd=root, env=env_for(root, db), capture_output=True, text=True, timeout=600)
        verified.append(check.returncode)
    return f"runs exit {codes}, verify of @champion from each folder exit {verified}"


def _parallel_store_opening(folder: Path) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = "from mergeline.tracking.mlflow_setup import open_store; import sys; open_store(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(proc.wait(timeout=600), proc.stderr.read() if proc.stderr else "") for proc in procs]
    failed = sum(1 for rc, _ in results if rc != 0)
    return f"{4 - failed} of 4 opened"


def _stage_while_locked(folder: Path) -> str:
    root = new_project(folder)  # valid params: the lock is what refuses
    with RunLock(root, "mergeline run"):
        code, _, err = run_main(["stage", "merge", "--params", "params.yaml"], cwd=root)
    return f"exit {code}, {len(lines(err))} line" + (", names holder" if f"pid {os.getpid()}" in err else "")


def _stage_beside_a_run_on_its_data_dir(folder: Path) -> str:
    """``mergeline stage prepare-data`` in a project whose ``data_dir`` another project's run holds."""
    shared = folder / "shared-tasks"
    root = make_project(folder / "project", shared_tiny_base(), data_dir=str(shared)).resolve()
    with RunLock(folder / "other", "mergeline run", folder / "other" / "work", shared):
        code, _, err = run_main(["stage", "prepare-data", "--params", "params.yaml"], cwd=root)
    named = ", names data_dir" if lines(err) and lines(err)[0].startswith(f"error: data_dir {shared}:") else ""
    return f"exit {code}, {len(lines(err))} line{named}, {'nothing' if not any(shared.iterdir()) else 'data'} written"


def _orphans_of_a_dead_run(folder: Path) -> str:
    """A run.json left by a 'dead' run: a live process of its group and a RUNNING MLflow run of its owner.

    The next run cleans them up before it starts its worker, then runs to the end. (A run refused
    for bad input, such as a work pool without a server, is refused before it takes the lock, so it
    cleans nothing: that is the bad-input guarantee, and it cannot stand in for a failing run here.)
    """
    root = new_project(folder)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    uri = configure_tracking(f"sqlite:///{root / 'mlflow.db'}", "robust-orphans")
    lock = RunLock(root, "mergeline run").acquire()
    lock.holder = Holder(pid=999999, start=1, host="ghost", command="mergeline run", since=time.time(),
                         tracking_uri=uri, worker_pgid=orphan.pid, worker_start=process_start(orphan.pid))
    lock.write_record()
    lock.release(ended=False)
    run = MlflowClient().create_run(MlflowClient().get_experiment_by_name("robust-orphans").experiment_id,
                               tags={OWNER_TAG: lock.holder.owner}).info.run_id
    env = {**env_for(root), "MLFLOW_TRACKING_URI": uri}
    later = subprocess.run([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    time.sleep(0.5)
    gone = orphan.poll() is not None
    if not gone:
        orphan.kill()
    seen = f"exit {later.returncode}, orphan {'killed' if gone else 'left'}, its run {MlflowClient().get_run(run).info.status}"
    return seen if gone else f"{seen}: {later.stderr.strip()[-200:]}"


CASES: list[Case] = [
    Case("concurrency", "mergeline stage while a run holds the folder", "exit 2, 1 line, names holder",
         _stage_while_locked),
    Case("concurrency", "mergeline stage naming a data_dir another project's run holds",
         "exit 2, 1 line, names data_dir, nothing written", _stage_beside_a_run_on_its_data_dir),
    Case("concurrency", "4 processes open one new SQLite store at once", "4 of 4 opened", _parallel_store_opening),
    Case("concurrency", "a dead run's leftover process and RUNNING run, then a run",
         "exit 0, orphan killed, its run KILLED",
         _orphans_of_a_dead_run, slow=True),
    Case("concurrency", "second mergeline run in the same folder while the first runs",
         "second exit 2, 1 line, names holder; first exit 0, 2 versions", _second_run_same_folder, slow=True),
    Case("concurrency", "a second project naming the running project's work_dir",
         "second exit 2, 1 line, names holder, nothing started; first exit 0", _second_project_same_work_dir, slow=True),
    Case("concurrency", "two folders, one MLflow store, runs at the same time",
         "runs exit [0, 0], verify of @champion from each folder exit [0, 0]", _two_folders_one_store, slow=True),
    _signal_case("Ctrl-C (SIGINT) during a fine-tune", signal.SIGINT, "fine-tune",
                 "exit 130, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left"),
    _signal_case("SIGTERM during a merge", signal.SIGTERM, "merge:",
                 "exit 143, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left"),
    _signal_case("SIGHUP (terminal closed) during an evaluation", signal.SIGHUP, "evaluate:",
                 "exit 129, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left"),
    _signal_case("kill -9 of mergeline run during a fine-tune", signal.SIGKILL, "fine-tune",
                 "killed, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left", whom="group"),
]

REPRESENTATIVE: set[str] = set()  # CI: tests/integration/test_run_signals.py, tests/unit/test_runlock.py


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
