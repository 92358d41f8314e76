"""The whole pipeline on a tiny Llama, with real Prefect (embedded), MLflow (SQLite), DVC and lm-eval.

Covers issue 3's contract: `mergeline run` registers `<model>@champion` with every ARCHITECTURE.md
tag and prints the results table; an unchanged re-run recomputes nothing; a run killed mid-way
resumes from the last finished stage; bad input fails before heavy work with one line and exit 2;
`dvc repro` and `dvc exp run` work on a fresh project with user data tasks (one multiple-choice JSONL,
one generation CSV) and `dvc push` stores the outputs on the remote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import session_dir
from mergeline.io.hashing import sha256_file
from tests.integration.pipeline_project import (
    ARCHITECTURE_TAGS, MERGELINE, finished_runs, make_project, project_env, run_cli, write_user_tasks,
)
from tests.lm_fixtures import build_tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_base() -> Path:
    target = session_dir() / "pipeline-tiny-base"
    if not (target / "config.json").exists():
        build_tiny_llama(target, seed=0)
    return target


@pytest.fixture(scope="module")
def finished_project(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = make_project(tmp_path_factory.mktemp("pipeline") / "project", tiny_base)
    result = run_cli(root, "run", "--params", "params.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result.stdout


def test_run_registers_champion_with_lineage_tags(finished_project: tuple[Path, str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    root, stdout = finished_project
    assert "| model |" in stdout and "champion" in stdout, stdout[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    version = MlflowClient().get_model_version_by_alias("mergeline-tiny", "champion")
    for tag in ARCHITECTURE_TAGS:
        assert tag in version.tags, f"missing tag {tag}"
        assert 0 < len(version.tags[tag]) < 5000
    assert version.tags["mergeline.method"] in {"task_arithmetic", "ties", "sta", "metagpt", "talos"}
    metrics = json.loads((root / "data/work/eval/metrics.json").read_text())
    assert metrics["champion"] in metrics["test"]
    row = metrics["test"][metrics["champion"]]
    assert {"acc/news", "acc/sentiment", "norm_acc/mean", "control_drift"} <= set(row)
    assert all(0.0 <= row[f"acc/{t}"] <= 1.0 for t in ("news", "sentiment"))


def test_lineage_verify_and_reproduce_after_a_real_run(finished_project: tuple[Path, str]) -> None:
    root, _ = finished_project
    ok = run_cli(root, "lineage", "mergeline-tiny@champion", "--verify")
    assert ok.returncode == 0, ok.stderr
    # the champion's own first task vector (a TaLoS champion names the news-talos vector, not news)
    lineage = json.loads(run_cli(root, "lineage", "mergeline-tiny@champion", "--format", "json").stdout)
    vector = root / lineage["tasks"][0]["vector"]["path"] / "task_vector.safetensors"
    original = vector.read_bytes()
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF
    vector.write_bytes(bytes(flipped))
    try:
        bad = run_cli(root, "lineage", "mergeline-tiny@champion", "--verify")
        assert bad.returncode == 1 and "task_vector.safetensors" in bad.stderr, bad.stderr
    finally:
        vector.write_bytes(original)
    rebuilt = run_cli(root, "reproduce", "mergeline-tiny@champion", "--out", str(root / "rebuilt"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    mermaid = run_cli(root, "lineage", "mergeline-tiny@champion", "--format", "mermaid")
    assert mermaid.returncode == 0 and mermaid.stdout.lstrip().startswith("graph")


def test_unchanged_rerun_recomputes_nothing(finished_project: tuple[Path, str]) -> None:
    root, _ = finished_project
    before = {name: finished_runs(root, name) for name in ("fine-tune:news-full", "merge:ta_l0.5",
                                                           "evaluate:base-validation")}
    checkpoint = root / "data/work/checkpoints/news/model.safetensors"
    mtime = checkpoint.stat().st_mtime_ns
    result = run_cli(root, "run", "--params", "params.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    after = {name: finished_runs(root, name) for name in before}
    assert after == before, "a stage ran again on an unchanged experiment"
    assert checkpoint.stat().st_mtime_ns == mtime
    assert "already registered" in result.stdout


def test_killed_run_resumes_from_last_finished_stage(tiny_base: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", tiny_base)
    env = project_env(root)
    proc = subprocess.Popen([*MERGELINE, "run", "--params", "params.yaml"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = root / "data/work/checkpoints/news/model.safetensors"
    # the next fine-tune's output: once it exists, Prefect has persisted the first one's result too
    # (the checkpoint folder is renamed into place a moment before its task result is written)
    following = root / "data/work/checkpoints/news-talos/model.safetensors"
    deadline = time.monotonic() + 600
    while not following.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.exists(), "the first fine-tune never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    mtime = first.stat().st_mtime_ns
    assert not (root / "data/work/merged").exists(), "killed too late to test a resume"

    result = run_cli(root, "run", "--params", "params.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    assert first.stat().st_mtime_ns == mtime, "the finished fine-tune was recomputed"
    assert finished_runs(root, "fine-tune:news-full") == 1
    assert finished_runs(root, "fine-tune:sentiment-full") == 1


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("tasks=[news,nope]", "unknown task 'nope'"), ("merge.lambda=7", "merge.lambda"),
     ("merge.methods.ties.densities=[1.5]", "density=1.5"), ("merge.methods.magic={}", "unknown method 'magic'")],
)
def test_bad_params_fail_fast(tiny_base: Path, tmp_path: Path, override: str, fragment: str) -> None:
    root = make_project(tmp_path / "project", tiny_base)
    result = run_cli(root, "run", "--params", "params.yaml", "--set", override, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (root / "data/work").exists() and not (root / "mlflow.db").exists()


def test_malformed_dataset_and_missing_base_fail_fast(tiny_base: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", tiny_base)
    bad = root / "data/tasks/news/train.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"id": "1", "prompt": "x", "choices": [" a", " b"], "label": 0}\nnot json\n')
    result = run_cli(root, "run", "--params", "params.yaml", timeout=120)
    assert result.returncode == 2 and "train.jsonl:2" in result.stderr, result.stderr
    bad.write_text("")
    result = run_cli(root, "run", "--params", "params.yaml", timeout=120)
    assert result.returncode == 2 and "train.jsonl" in result.stderr, result.stderr
    bad.unlink()
    result = run_cli(root, "run", "--params", "params.yaml", "--set", f"base_model={tmp_path / 'nowhere'}",
                     timeout=120)
    assert result.returncode == 2 and "base_model" in result.stderr, result.stderr


def test_dvc_repro_and_exp_run_with_user_tasks(tiny_base: Path, tmp_path: Path) -> None:
    """A fresh project with one user multiple-choice JSONL and one user generation CSV task: `dvc repro`
    runs every stage, `dvc exp run -S merge.lambda=…` re-merges, the lock pins every stage, the metrics
    show, the champion's lineage hashes each data file, and only the registered variant stays on disk."""
    import yaml

    root = tmp_path / "project"
    root.mkdir()
    tasks = write_user_tasks(root, rows=16)
    make_project(root, tiny_base, tasks=tasks, talos={"enabled": False},
                 merge={"lambda": None, "seed": 0, "methods": {"task_arithmetic": {"lambdas": [0.5, 1.0]}}})
    env = project_env(root)
    dvc = [*MERGELINE[:1], "-m", "dvc"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*dvc, *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    # The user's data files are deps of prepare-data (`mergeline stage` refuses to run without them).
    refused = subprocess.run([*dvc, "repro", "prepare-data"], cwd=root, env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "does not depend on" in refused.stdout + refused.stderr
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
    shown = json.loads(run("metrics", "show", "--json").stdout)
    shown_metrics = shown["workspace"]["data"]["data/work/eval/metrics.json"]["data"]
    assert shown_metrics["champion"] == "ta_l0.7" and "acc/mean" in shown_metrics["test"]["ta_l0.7"], shown
    assert yaml.safe_load((root / "dvc.lock").read_text())["stages"]["merge"]["outs"][0]["md5"] != \
        lock["merge"]["outs"][0]["md5"]
    run("push")
    remote = root.parent / f"{root.name}-remote"
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push stored nothing on the remote"
