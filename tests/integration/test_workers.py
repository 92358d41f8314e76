"""Scheduling on a work pool, for real: a Prefect server, process workers, prefect.yaml deployments.

One run of the ``mergeline-pipeline`` deployment on a tiny Llama (2 tasks → 4 fine-tunes: full +
TaLoS; one merged variant). The pipeline run goes to the pool's ``default`` queue (a "conductor"
worker); its fine-tunes fan out as runs of ``mergeline-finetune`` on the ``finetune`` queue and the
evaluations of the variant as runs of ``mergeline-evaluate`` on the ``evaluate`` queue, both served
by two workers with ``--limit 1`` each (one per GPU on a real machine; CPU here). Asserts: the
pipeline completed and registered ``@champion``, the pooled runs ran on BOTH workers and never two
at once on one worker, and every process started here is gone at the end.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import session_dir
from tests.integration.pipeline_project import (
    ARCHITECTURE_TAGS, REPO, Processes, finished_runs, free_port, make_project, project_env, run_cli, wait_healthy,
)
from tests.lm_fixtures import build_tiny_llama

pytestmark = pytest.mark.slow

PREFECT = [str(Path(sys.executable).with_name("prefect"))]
FINETUNE_WORKERS = ("w1", "w2")
# Still 2 tasks x (full + TaLoS) = 4 fine-tunes; one merge variant keeps the evaluations few.
ONE_VARIANT = "merge.methods={task_arithmetic: {lambdas: [1.0]}}"


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run([*PREFECT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def tiny_base() -> Path:
    target = session_dir() / "pipeline-tiny-base"
    if not (target / "config.json").exists():
        build_tiny_llama(target, seed=0)
    return target


@contextmanager
def cluster(tiny_base: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Server + pool + conductor + two fine-tune workers + deployments; everything stopped after,
    workers first (two SIGINTs, G6), then the server (SIGTERM). ``procs.survivors`` lists what was
    still alive after that (and had to be killed)."""
    root = make_project(tmp_path / "project", tiny_base)
    logs = tmp_path / "logs"
    logs.mkdir()
    api = f"http://127.0.0.1:{free_port()}/api"
    base_env = project_env(root)
    base_env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true", "PREFECT_LOGGING_LEVEL": "INFO",
    })
    client_env = {**base_env, "PREFECT_API_URL": api}
    # Workers ask for work every second (default 10 s); each flow run inherits the worker's env:
    # where the project is (the pull step reads it), the shared result folder and MLflow store.
    worker_env = {**client_env, "PREFECT_WORKER_QUERY_SECONDS": "2", "MERGELINE_PROJECT_DIR": str(root),
                  "MERGELINE_FANOUT_POLL_SECONDS": "1", "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    procs = Processes(logs)
    port = api.rsplit(":", 1)[1].split("/")[0]
    try:
        server = procs.start("server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port,
                                        "--no-ui"], base_env, tmp_path)
        wait_healthy(api, server, logs / "server.log")
        _cli(["work-pool", "create", "gpu", "--type", "process"], client_env, tmp_path)
        # A server-side cap for the whole queue on top of the per-worker (per-GPU) --limit 1.
        for queue in ("finetune", "evaluate"):
            _cli(["work-queue", "create", queue, "--pool", "gpu", "--limit", str(len(FINETUNE_WORKERS))],
                 client_env, tmp_path)
        procs.start("conductor", [*PREFECT, "worker", "start", "--pool", "gpu", "--name", "conductor",
                                  "--work-queue", "default"], worker_env, tmp_path)
        for name in FINETUNE_WORKERS:
            procs.start(name, [*PREFECT, "worker", "start", "--pool", "gpu", "--name", name, "--work-queue",
                               "finetune", "--work-queue", "evaluate", "--limit", "1"], worker_env, tmp_path)
        # While the workers start: MERGELINE_PROJECT_DIR is not set here, so the deployments' pull
        # step reads it on the workers, when a run starts.
        _cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml")], client_env, REPO)
        yield {"root": root, "api": api, "procs": procs, "logs": logs}
    finally:
        tree = procs.tree()
        procs.stop_workers(("conductor", *FINETUNE_WORKERS))
        if "server" in procs.started:
            procs.stop_server("server")
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:  # only if a stop failed; the test below then fails on it
            proc.kill()
        procs.survivors = [f"{p.pid}" for p in alive]


def _wait_final(client: Any, run_id: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = client.read_flow_run(run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s")


def _runs_by_worker(logs: Path) -> dict[str, list[str]]:
    """Flow-run names each worker started, from its own log. Two workers may both try to take a run
    ("submitting flow run"); only the one the server lets through logs "submitted to infrastructure"."""
    started = {}
    for name in ("conductor", *FINETUNE_WORKERS):
        text = (logs / f"{name}.log").read_text(errors="replace")
        started[name] = re.findall(r"Flow run '([^']+)' submitted to infrastructure", text)
    return started


def _log_tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.glob("*.log")))


def test_pipeline_fans_fine_tunes_out_to_both_workers(tiny_base: Path, tmp_path: Path) -> None:
    with cluster(tiny_base, tmp_path) as running:
        pipeline_run_id = _run_and_check_pool(running)
        procs: Processes = running["procs"]
    assert set(procs.started) == {"server", "conductor", *FINETUNE_WORKERS}
    assert procs.survivors == [], f"processes left after stopping by PID: {procs.survivors}"
    assert all(p.poll() is not None for p in procs.started.values())
    _check_registered(tmp_path / "project", pipeline_run_id)


def _run_and_check_pool(cluster: dict[str, Any]) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root: Path = cluster["root"]
    with temporary_settings({PREFECT_API_URL: cluster["api"]}), get_client(sync_client=True) as client:
        started = time.monotonic()
        pipeline_run = run_deployment("mergeline-pipeline/mergeline-pipeline", timeout=0, parameters={
            "params_file": str(root / "params.yaml"), "root": str(root), "overrides": [ONE_VARIANT]})
        finished = _wait_final(client, pipeline_run.id, timeout=1500)
        print(f"pipeline run on the pool: {time.monotonic() - started:.0f} s")
        assert finished.state.is_completed(), f"{finished.state}\n{_log_tails(cluster['logs'])}"
        # prefect.yaml's example schedule is there, and off.
        schedules = client.read_deployment_by_name("mergeline-pipeline/mergeline-pipeline").schedules
        assert [(s.schedule.cron, s.active) for s in schedules] == [("0 2 * * *", False)]
        deployments = [client.read_deployment_by_name(f"mergeline-{step}/mergeline-{step}").id
                       for step in ("finetune", "evaluate")]
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployments)))
        assert sorted(r.name for r in runs) == sorted(
            [*(f"fine-tune-{t}-{m}" for t in ("news", "sentiment") for m in ("full", "talos")),
             "evaluate-ta_l1-validation", "evaluate-ta_l1-test"])
        assert all(r.state.is_completed() for r in runs), [(r.name, r.state) for r in runs]
        # Linked to the pipeline run as subflows (run_deployment inside a flow).
        assert {client.read_task_run(r.parent_task_run_id).flow_run_id for r in runs} == {pipeline_run.id}

    by_worker = _runs_by_worker(cluster["logs"])
    assert by_worker["conductor"] == [finished.name]
    assert all(by_worker[w] for w in FINETUNE_WORKERS), f"a GPU worker ran nothing: {by_worker}"
    assert sorted(by_worker["w1"] + by_worker["w2"]) == sorted(r.name for r in runs), by_worker
    spans = {r.name: (r.start_time, r.end_time) for r in runs}
    for worker in FINETUNE_WORKERS:  # --limit 1: one run at a time per worker (GPU)
        ordered = sorted(spans[name] for name in by_worker[worker])
        assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:])), f"{worker} ran two runs at once"
    return pipeline_run.id


def _check_registered(root: Path, pipeline_run_id: Any) -> None:
    """The pipeline registered its champion; the fine-tunes' MLflow runs are in the same store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    for task in ("news", "sentiment"):
        assert (root / f"data/work/checkpoints/{task}/model.safetensors").exists()
        assert finished_runs(root, f"fine-tune:{task}-full") == 1
        assert finished_runs(root, f"fine-tune:{task}-talos") == 1
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    version = MlflowClient().get_model_version_by_alias("mergeline-tiny", "champion")
    assert set(ARCHITECTURE_TAGS) <= set(version.tags)
    assert version.tags["mergeline.method"] == "task_arithmetic"
    assert version.tags["mergeline.prefect_flow_run_id"] == str(pipeline_run_id)


def test_device_override_cuda_without_gpu_fails_fast(tiny_base: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root = make_project(tmp_path / "project", tiny_base)
    result = run_cli(root, "run", "--params", "params.yaml", "--device", "cuda", timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["error: device: 'cuda' requested but torch sees no CUDA device"]
    assert not (root / "data/work").exists() and not (root / "mlflow.db").exists()
    result = run_cli(root, "run", "--params", "params.yaml", "--device", "tpu", timeout=60)
    assert result.returncode == 2 and "--device" in result.stderr


def test_pool_configured_without_server_fails_fast(tiny_base: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", tiny_base)
    env = {**project_env(root), "MERGELINE_WORK_POOL": "gpu"}
    result = subprocess.run([sys.executable, "-m", "mergeline.cli", "run", "--params", "params.yaml"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: MERGELINE_WORK_POOL=gpu needs PREFECT_API_URL (a Prefect server with workers on the pool)"]
    assert not (root / "data/work").exists() and not (root / "mlflow.db").exists()
