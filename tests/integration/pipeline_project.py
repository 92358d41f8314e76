"""A throw-away mergeline project for pipeline tests: tiny base model, tiny params, git + DVC repo.

Real parts only: the pipeline runs through the installed ``mergeline`` CLI, which starts Prefect's
embedded server, writes a SQLite MLflow store and runs lm-eval, all inside the project folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

import yaml

REPO = Path(__file__).resolve().parents[2]
MERGELINE = [sys.executable, "-m", "mergeline.cli"]

ARCHITECTURE_TAGS = (
    "mergeline.method", "mergeline.coefficients", "mergeline.sparsity", "mergeline.base_model_sha256",
    "mergeline.task_vectors", "mergeline.params_sha256", "mergeline.git_commit", "mergeline.dvc_lock_sha256",
    "mergeline.prefect_flow_run_id", "mergeline.lineage_sha256",
)


def make_project(root: Path, base_model: Path, **overrides: object) -> Path:
    """Write params.yaml (tiny params, ``base_model`` absolute) and make ``root`` a git + DVC repo."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    params["base_model"] = str(base_model)
    params.update(overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    # dvc.yaml lists library folders as deps; point them at the installed code.
    (root / "mergeline").symlink_to(REPO / "mergeline")
    env = project_env(root)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.invalid"],
                ["git", "config", "user.name", "test"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote")],
                ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def write_user_tasks(root: Path, rows: int = 24) -> list[dict[str, object]]:
    """Write one multiple-choice JSONL and one generation CSV under ``root/my``; return their task entries."""
    import csv
    import json

    folder = root / "my"
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ["hardware", "software", "billing"]
    words = ["printer", "laptop", "invoice", "screen", "update", "refund", "cable", "login", "charge"]
    with open(folder / "tickets.jsonl", "w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(json.dumps({"body": f"my {words[i % 9]} is not working ({i})", "options": kinds,
                                     "answer": kinds[(i % 9) // 3]}) + "\n")
    with open(folder / "titles.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["abstract", "title"])
        for i in range(rows):
            writer.writerow([f"{words[i % 9]} {words[(i + 4) % 9]} report {i}", words[i % 9]])
    return [
        {"name": "tickets", "data": {"path": "my/tickets.jsonl"}, "type": "multiple_choice",
         "fields": {"text": "body", "choices": "options", "label": "answer"}, "prompt": "Ticket: {text}\nCategory:",
         "split": {"validation": 0.25, "test": 0.25, "seed": 0}},
        {"name": "titles", "data": {"path": "my/titles.csv"}, "type": "generation",
         "fields": {"text": "abstract", "target": "title"}, "prompt": "Abstract: {text}\nTitle:",
         "split": {"validation": 0.25, "test": 0.25, "seed": 0}, "metric": "exact_match"},
    ]


def project_env(root: Path, results: Path | None = None) -> dict[str, str]:
    """Environment for CLI subprocesses: the project's own Prefect state and MLflow store."""
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(root / ".prefect")
    env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(results or root / ".prefect" / "results")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.pop("PREFECT_API_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    # As in an activated venv: dvc.yaml's `mergeline stage ...` commands find the console script.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_cli(root: Path, *args: str, timeout: float = 900, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MERGELINE, *args], cwd=root, env={**project_env(root), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


class Processes:
    """Long-running processes started by the test, each in its own session, stopped by PID."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self.survivors: list[str] = []

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started[name] = proc
        return proc

    def tree(self) -> list[psutil.Process]:
        found = []
        for proc in self.started.values():
            try:
                parent = psutil.Process(proc.pid)
                found += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found

    def stop_workers(self, names: tuple[str, ...]) -> None:
        # G6: the first SIGINT asks a worker to wind down (it can take > 10 s); the second makes it
        # kill itself. Each round goes to every worker at once.
        procs = [self.started[n] for n in names if n in self.started]
        for patience in (5, 20):
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + patience
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.2)

    def stop_server(self, name: str) -> None:
        proc = self.started[name]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def prefect_server(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 for the duration (state under ``folder``); yields its API URL.

    Commands that each run a flow (``dvc repro`` runs one ``mergeline stage`` per stage) then connect to
    it instead of starting Prefect's temporary server every time, which is half of a no-op stage's CPU.
    """
    api = f"http://127.0.0.1:{free_port()}/api"
    procs = Processes(folder)
    server_env = {**env, "PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL", None)
    server = procs.start("server", [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                    "127.0.0.1", "--port", api.rsplit(":", 1)[1].split("/")[0], "--no-ui"],
                         server_env, folder)
    try:
        wait_healthy(api, server, folder / "server.log")
        yield api
    finally:
        tree = procs.tree()
        procs.stop_server("server")
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            proc.kill()


def finished_runs(root: Path, run_name: str) -> int:
    """How many FINISHED MLflow runs named ``run_name`` the project's store holds."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = '{run_name}'")
    return sum(1 for r in runs if r.info.status == "FINISHED")


def shared_tiny_base() -> Path:
    """The tiny Llama of the pipeline tests, built once per test session."""
    from tests.conftest import session_dir
    from tests.lm_fixtures import build_tiny_llama

    target = session_dir() / "pipeline-tiny-base"
    if not (target / "config.json").exists():
        build_tiny_llama(target, seed=0)
    return target


def given_checkpoint(base: Path, folder: Path, seed: int = 7) -> Path:
    """A stand-in fine-tune of the base (its tensors plus noise) with the base's tokenizer: a task's given model."""
    from tests.merge_fixtures import finetune

    finetune(base, folder, seed=seed, scale=0.01)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (base / name).is_file():
            shutil.copyfile(base / name, folder / name)
    return folder
