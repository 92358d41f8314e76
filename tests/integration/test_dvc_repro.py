"""`dvc repro` on a fresh project, then `dvc exp run -S merge.lambda=…`, on the tiny model and two user tasks.

Real DVC, Prefect (one server for the test: each stage is its own `mergeline stage` process), MLflow
(SQLite) and lm-eval. The project's tasks are one multiple-choice JSONL and one generation CSV written
here, so the same run checks that user data files are DVC deps and that their hashes reach lineage.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mergeline.io.hashing import sha256_file
from tests.integration.pipeline_project import (
    MERGELINE, make_project, prefect_server, project_env, run_cli, shared_tiny_base, write_user_tasks,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh git + DVC project on the two user tasks (one method, no TaLoS), and a Prefect server."""
    root = tmp_path / "project"
    root.mkdir()
    tasks = write_user_tasks(root, rows=16)
    make_project(root, shared_tiny_base(), tasks=tasks, talos={"enabled": False},
                 merge={"lambda": None, "seed": 0, "methods": {"task_arithmetic": {"lambdas": [0.5, 1.0]}}})
    env = project_env(root)
    with prefect_server(tmp_path, env) as api:
        yield root, {**env, "PREFECT_API_URL": api}


def test_dvc_repro_and_exp_run_with_user_tasks(project: tuple[Path, dict[str, str]]) -> None:
    """A fresh project with one user multiple-choice JSONL and one user generation CSV task: `dvc repro`
    runs every stage, `dvc exp run -S merge.lambda=…` re-merges, the lock pins every stage, the metrics
    show, the champion's lineage hashes each data file, and only the registered variant stays on disk."""
    root, env = project
    dvc = [*MERGELINE[:1], "-m", "dvc"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*dvc, *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    # The user's data files are deps of prepare-data (`mergeline stage` refuses to run without them,
    # tests/unit/test_user_tasks.py).
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    pipeline["stages"]["prepare-data"]["deps"].append("my")
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "data deps"], cwd=root, env=env, check=True)

    run("repro")
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(pipeline["stages"])
    for name, stage in lock.items():
        hashed = [*stage.get("deps", []), *stage.get("outs", [])]
        assert hashed and all(entry.get("md5") for entry in hashed), f"stage {name} without hashes"
    assert {d["path"] for d in lock["prepare-data"]["deps"]} >= {"my"}
    metrics = json.loads((root / "data/work/eval/metrics.json").read_text())
    champion = metrics["champion"]
    assert {"acc/tickets", "acc/titles", "norm_acc/mean"} <= set(metrics["test"][champion])
    # disk: merged.json lists both variants; only the registered one keeps its folder
    assert set(json.loads((root / "data/work/merged.json").read_text())) == {"ta_l0.5", "ta_l1"}
    assert [p.name for p in (root / "data/work/merged").iterdir()] == [champion]

    lineage = json.loads(run_cli(root, "lineage", "mergeline-tiny@champion", "--format", "json").stdout)
    sources = {t["name"]: t["datasets"] for t in lineage["tasks"]}
    for task, path in (("tickets", "my/tickets.jsonl"), ("titles", "my/titles.csv")):
        assert sources[task][f"source:{path}"]["sha256"] == sha256_file(root / path)
    assert run_cli(root, "lineage", "mergeline-tiny@champion", "--verify").returncode == 0

    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "repro"], cwd=root, env=env, check=True)
    exp = run("exp", "run", "-S", "merge.lambda=0.7")
    assert "Stage 'fine-tune' didn't change, skipping" in exp.stdout and "Running stage 'merge'" in exp.stdout
    shown = json.loads(run("metrics", "show", "--json").stdout)  # {"": {"data": {file: {"data": ...}}}}
    shown_metrics = next(iter(shown.values()))["data"]["data/work/eval/metrics.json"]["data"]
    assert shown_metrics["champion"] == "ta_l0.7" and "acc/mean" in shown_metrics["test"]["ta_l0.7"], shown
    assert yaml.safe_load((root / "dvc.lock").read_text())["stages"]["merge"]["outs"][0]["md5"] != \
        lock["merge"]["outs"][0]["md5"]
    run("push")
    remote = root.parent / f"{root.name}-remote"
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push stored nothing on the remote"
