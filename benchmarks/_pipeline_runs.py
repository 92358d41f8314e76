"""A cold ``mergeline run`` in a project folder of its own, and the timings it recorded in MLflow
(used by ``stage_times.py`` and ``pipeline_workers.py``).

Every call of a pipeline step is a nested MLflow run of the parent run ``pipeline:<experiment>``,
tagged ``mergeline.stage`` and ``mergeline.step``, named ``<step>:<label>``, with the metric
``stage_seconds`` (the call's own time) and MLflow's start and end times. Registration runs carry no
step tag and are left out. Nothing here times anything itself: the figures are the pipeline's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from mergeline.env import WORKERS_ENV
from mergeline.errors import MergelineError
from mergeline.params import ExperimentParams, load_params

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Call:
    """One recorded call of a step: its MLflow times (seconds since the epoch) and its own seconds."""

    stage: str
    step: str
    label: str
    start: float
    end: float
    seconds: float


@dataclass(frozen=True)
class Recorded:
    """One pipeline run as MLflow holds it: the parent run's wall time and its calls, oldest first."""

    pipeline_seconds: float
    calls: list[Call]


def fresh(folder: Path, script: str) -> None:
    """Empty ``folder`` for a cold run; refuse a non-empty folder that ``script`` did not make."""
    marker = f".{script}"
    if folder.exists() and any(folder.iterdir()):
        if not (folder / marker).is_file():
            raise MergelineError(f"--root {folder}: not empty and not made by {script}.py (no {marker}); "
                                 "pick a new folder")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / marker).write_text(f"made by benchmarks/{script}.py; wiped on each run\n", encoding="utf-8")


def run_params(params_file: str, overrides: list[str]) -> tuple[ExperimentParams, dict[str, Any]]:
    """The validated params, and their YAML form with a local ``base_model`` made absolute, so they hold
    from any project folder. MergelineError when ``base_model`` is a path with no model folder."""
    checked = load_params(params_file, overrides)
    base = Path(checked.base_model)
    if (base.is_absolute() or checked.base_model.startswith(".") or "/" in checked.base_model) \
            and not (base.resolve() / "config.json").is_file():
        raise MergelineError(f"base_model {checked.base_model}: no model folder there; give one with "
                             "--set base_model=PATH (params/tiny.yaml's is built by the tests)")
    params = checked.model_dump(mode="json", by_alias=True)
    if (Path.cwd() / checked.base_model).exists():
        params["base_model"] = str((Path.cwd() / checked.base_model).resolve())
    return checked, params


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project.resolve() / 'mlflow.db'}"


def run_pipeline(project: Path, params: dict[str, Any], workers: int) -> float:
    """``mergeline run`` in the new folder ``project`` (its own Prefect state and MLflow store, so no
    call is a cache hit), ``workers`` calls at once; its wall time in seconds, its stdout in stdout.txt."""
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, WORKERS_ENV: str(workers), "PREFECT_HOME": str(project / ".prefect"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(project / ".prefect" / "results"),
           "MLFLOW_TRACKING_URI": tracking_uri(project)}
    env.pop("PREFECT_API_URL", None)
    env.pop("MERGELINE_WORK_POOL", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mergeline.cli", "run", "--params", "params.yaml"], cwd=project,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise MergelineError(f"mergeline run in {project} (workers={workers}) failed:\n{done.stderr[-3000:]}")
    (project / "stdout.txt").write_text(done.stdout, encoding="utf-8")
    return seconds


def results_table(project: Path) -> str:
    """The results table the run printed (what two runs must agree on); empty for a run made elsewhere."""
    stdout = project / "stdout.txt"
    return stdout.read_text(encoding="utf-8").split("registered")[0].strip() if stdout.is_file() else ""


def recorded(uri: str) -> Recorded:
    """The latest pipeline run in the MLflow store at ``uri`` and its step calls."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10_000)
    parents = [r for r in runs if r.info.run_name.startswith("pipeline:") and r.info.end_time]
    if not parents:
        raise MergelineError(f"{uri}: no finished pipeline run")
    parent = max(parents, key=lambda r: r.info.start_time)
    calls = [Call(r.data.tags["mergeline.stage"], r.data.tags["mergeline.step"], r.info.run_name.split(":", 1)[-1],
                  r.info.start_time / 1000, r.info.end_time / 1000, r.data.metrics.get("stage_seconds", 0.0))
             for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
             and "mergeline.step" in r.data.tags and r.info.end_time]
    return Recorded((parent.info.end_time - parent.info.start_time) / 1000, sorted(calls, key=lambda c: c.start))
