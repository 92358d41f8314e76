"""The README's team set-up, run as written: PostgreSQL, Prefect and MLflow servers, two workers, a run.

Every ``# [section]`` of the README's team block runs here in its own folder ("machine"): a
throw-away PostgreSQL on 127.0.0.1 holds both servers' databases; the MLflow server proxies its
artifact store; the two GPU-worker lines start CPU workers (GPU=0, 1), each in an empty folder of
its own with its own Prefect home and result folder, knowing the servers only by URL; the run
section fans the tiny experiment's four fine-tunes out to them from the project's checkout; the
check section verifies and rebuilds the champion in a fresh clone of the project. Asserts: both
workers ran fine-tunes (and evaluations of merged variants) in their own folders; their checkpoints reached the
project through MLflow, checked; the champion is in the PostgreSQL-backed registry with its files
in the proxied store; verify and reproduce pass in the clone; every process started is gone.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from mergeline.io.hashing import file_hashes
from tests.integration.pipeline_project import (
    Processes, free_port, make_project, project_env, shared_tiny_base, wait_healthy,
)
from tests.integration.team_recipe import postgres, recipe

pytestmark = pytest.mark.slow

WORKERS = ("0", "1")
TASK_MODES = [(t, m) for t in ("news", "sentiment") for m in ("full", "talos")]


def _project(folder: Path) -> Path:
    """The tiny experiment as the project's params/default.yaml (what a bare `mergeline run` reads), committed."""
    root = make_project(folder, shared_tiny_base())
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["registry"]["model_name"] = "mergeline-demo"
    params["merge"]["methods"] = {"task_arithmetic": {"lambdas": [1.0]}}  # one variant: few evaluations
    (root / "params").mkdir()
    (root / "params" / "default.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "params/default.yaml"], cwd=root, check=True)
    return root


def test_team_recipe_runs_as_written(tmp_path: Path) -> None:
    started = time.monotonic()
    project = _project(tmp_path / "project")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    env = project_env(project)
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(key, None)  # the recipe's own exports name the servers
    env.update({"PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_WORKER_QUERY_SECONDS": "2",
                "MERGELINE_FANOUT_POLL_SECONDS": "1", "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    machines = {name: tmp_path / name for name in ("servers", "admin", "worker0", "worker1", "checkout")}
    for folder in machines.values():
        folder.mkdir(exist_ok=True)
    try:
        with postgres() as pg:
            steps = recipe({**env, **pg, "PATH": f"{pg['PG_BIN']}:{env['PATH']}", "BIND": "127.0.0.1", "SERVER": "127.0.0.1", "PREFECT_PORT": str(free_port()),
                            "MLFLOW_PORT": str(free_port()), "ARTIFACTS": str(machines["servers"] / "artifacts")})
            home = {name: {"PREFECT_HOME": str(folder / ".prefect")} for name, folder in machines.items()}
            steps.run("database", machines["servers"], procs)
            steps.run("servers", machines["servers"], procs, **home["servers"])
            steps.run("clients", machines["admin"], procs)
            wait_healthy(steps.env["PREFECT_API_URL"], procs.started["servers-0"], logs / "servers-0.log", 300)
            wait_healthy(steps.env["MLFLOW_TRACKING_URI"], procs.started["servers-1"], logs / "servers-1.log", 300)
            steps.run("once", Path(__file__).resolve().parents[2], procs, **home["admin"])
            for gpu in WORKERS:
                steps.run("gpu-worker", machines[f"worker{gpu}"], procs, name=f"w{gpu}", GPU=gpu,
                          **home[f"worker{gpu}"])
            steps.run("run", project, procs, **{"PREFECT_HOME": str(project / ".prefect")})
            print(f"team run finished after {time.monotonic() - started:.0f} s")
            subprocess.run(["git", "clone", "-q", str(project), str(machines["checkout"] / "project")], check=True)
            steps.run("check", machines["checkout"] / "project", procs, **home["checkout"])
            try:
                _check_pool_and_store(steps.env, machines, project, logs)
            finally:  # workers, then servers, then (leaving the block) PostgreSQL
                alive = _stop(procs)
            assert not alive, f"still running after their stop: {alive}"
    finally:
        _stop(procs)
    print(f"team recipe test: {time.monotonic() - started:.0f} s")


def _stop(procs: Processes) -> list[int]:
    """Stop workers (two SIGINTs, G6) and servers by PID; kill and return whatever outlived that."""
    tree = procs.tree()
    procs.stop_workers(tuple(name for name in procs.started if name.startswith("w")))
    for name in ("servers-0", "servers-1"):
        if name in procs.started:
            procs.stop_server(name)
    alive = psutil.wait_procs(tree, timeout=15)[1]
    for proc in alive:
        proc.kill()
    return [p.pid for p in alive]


def _check_pool_and_store(env: dict[str, str], machines: dict[str, Path], project: Path, logs: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    # Each worker ran fine-tunes in its own folder, together all four; the variants' evaluations ran there too.
    ran = {gpu: re.findall(r"Flow run '([^']+)' submitted to infrastructure",
                           (logs / f"w{gpu}-0.log").read_text(errors="replace")) for gpu in WORKERS}
    finetunes = {gpu: [n.removeprefix("fine-tune-") for n in ran[gpu] if n.startswith("fine-tune-")] for gpu in WORKERS}
    assert all(finetunes.values()), ran
    assert sorted(finetunes["0"] + finetunes["1"]) == sorted(f"{t}-{m}" for t, m in TASK_MODES)
    assert any(n.startswith("evaluate-") for names in ran.values() for n in names), ran
    for gpu in WORKERS:
        own = machines[f"worker{gpu}"]
        made = sorted(p.name for p in (own / "data/work/checkpoints").iterdir())
        assert made == sorted(label.removesuffix("-full") for label in finetunes[gpu]), (gpu, made)
        assert (own / "data/work/base/config.json").is_file()  # fetched from the run's artifacts
        assert not (own / "mlflow.db").exists()
        for name in made:  # the project holds the same bytes, brought back through MLflow
            assert file_hashes(own / "data/work/checkpoints" / name) == file_hashes(
                project / "data/work/checkpoints" / name)
    assert not (project / "mlflow.db").exists()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    version = client.get_model_version_by_alias("mergeline-demo", "champion")
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.artifact_location.startswith("mlflow-artifacts:/")  # proxied by the server
    stored = list((machines["servers"] / "artifacts").rglob(f"{model.model_id}/artifacts/model.safetensors"))
    assert len(stored) == 1
    parent = client.get_run(client.get_run(version.run_id).data.tags["mlflow.parentRunId"])
    records = [a.path for a in client.list_artifacts(parent.info.run_id, "transfer/records")]
    assert len(records) == sum(len(names) for names in ran.values())  # one per pooled call
    finetunes = client.search_runs([parent.info.experiment_id],
                                   f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`mergeline.stage` = 'fine-tune'")
    assert len(finetunes) == len(TASK_MODES) and all(r.info.status == "FINISHED" for r in finetunes)
    summary: Any = json.loads((project / "data/work/eval/metrics.json").read_text())
    assert summary["champion"] in summary["test"]
    _check_prefect_assets(summary["champion"], env["PREFECT_API_URL"])


def _check_prefect_assets(champion: str, api_url: str) -> None:
    """The asset graph base → checkpoints → vectors → merged → registered, from the materializations
    the pipeline run and the workers' fine-tunes reported; the results table is a Markdown artifact."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"])),
                                  limit=50)
        events = list(page.events)
        while page.next_page is not None:
            page = client.read_events_page(page.next_page)
            events += page.events
        upstream = {e.resource.id: {r.id for r in e.related if r.role == "asset"} for e in events}
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["results-mergeline-tiny"])))
    key = "mergeline://mergeline-tiny/data/work/"
    expected = [f"{key}checkpoints/{t if m == 'full' else f'{t}-{m}'}" for t, m in TASK_MODES]
    assert set(expected) <= set(upstream), sorted(upstream)
    for task, mode in TASK_MODES:
        name = task if mode == "full" else f"{task}-{mode}"
        assert upstream[f"{key}checkpoints/{name}"] == {f"{key}base", "mergeline://mergeline-tiny/data/tasks"}
        assert upstream[f"{key}vectors/{name}"] >= {f"{key}checkpoints/{name}", f"{key}base"}
    assert upstream[f"{key}merged/{champion}"] >= {f"{key}base", f"{key}vectors/news", f"{key}vectors/sentiment"}
    # Prefect adds the assets it saw the flow read before; the variant registered is among them.
    assert f"{key}merged/{champion}" in upstream["mlflow://registered-models/mergeline-demo/champion"]
    assert [a.type for a in artifacts] == ["markdown"] and artifacts[0].data.startswith("| model |")
