"""The whole pipeline on a tiny Llama, with real Prefect (embedded), MLflow (SQLite), DVC and lm-eval.

Covers issue 3's contract: `mergeline run` registers `<model>@champion` with every ARCHITECTURE.md
tag and prints the results table; an unchanged re-run recomputes nothing; a run killed mid-way
resumes from the last finished stage; bad input fails before heavy work with one line and exit 2.
`dvc repro` / `dvc exp run` / `dvc push`: tests/integration/test_dvc_repro.py.
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
from tests.integration.pipeline_project import (
    ARCHITECTURE_TAGS, MERGELINE, finished_runs, make_project, project_env, run_cli,
)
from tests.lm_fixtures import build_tiny_llama

pytestmark = pytest.mark.slow
TALOS_LR, FINETUNE_LR = 3e-3, 1e-3  # FINETUNE_LR: params/tiny.yaml's finetune.lr


@pytest.fixture(scope="module")
def tiny_base() -> Path:
    target = session_dir() / "pipeline-tiny-base"
    if not (target / "config.json").exists():
        build_tiny_llama(target, seed=0)
    return target


@pytest.fixture(scope="module")
def finished_project(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    # TaLoS with its own learning rate (tiny.yaml's falls back to finetune.lr): the runs must tell them apart
    talos = {"enabled": True, "keep": 0.2, "rounds": 2, "calib_examples": 4, "lr": TALOS_LR}
    root = make_project(tmp_path_factory.mktemp("pipeline") / "project", tiny_base, talos=talos)
    result = run_cli(root, "run", "--params", "params.yaml", env={"MERGELINE_MAX_WORKERS": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result.stdout, result.stderr


def _errors(stderr: str) -> list[str]:
    """Lines of a successful run's stderr that a user would read as a failure."""
    return [line for line in stderr.splitlines() if "Traceback" in line or "ERROR" in line]


def test_run_registers_champion_with_lineage_tags(finished_project: tuple[Path, str, str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    root, stdout, stderr = finished_project
    assert _errors(stderr) == [], stderr[-4000:]
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


def test_champion_loads_with_mlflow_and_the_parent_run_shows_its_lineage(finished_project: tuple[Path, str, str]) -> None:
    """README's one call loads the champion; the MLflow UI's run page has the description, datasets and models."""
    import mlflow
    from mlflow.tracking import MlflowClient

    root, _, _ = finished_project
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    generator = mlflow.transformers.load_model("models:/mergeline-tiny@champion")
    assert generator("Review: good\nSentiment:", max_new_tokens=2, do_sample=False)[0]["generated_text"]
    client = MlflowClient()
    version = client.get_model_version_by_alias("mergeline-tiny", "champion")
    assert version.source.startswith("models:/m-") and version.description.startswith(
        f"**{version.tags['mergeline.method']}** merge")
    register_run = client.get_run(version.run_id)
    parent = client.get_run(register_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["mlflow.note.content"].startswith("| model |")
    assert {i.dataset.name for i in parent.inputs.dataset_inputs} >= {"news/train", "news/test", "sentiment/validation"}
    kinds = {client.get_logged_model(m.model_id).tags["mergeline.kind"] for m in parent.outputs.model_outputs}
    assert kinds == {"base", "fine-tuned", "task-vector", "merged"}


def test_report_reads_the_run_back_from_mlflow(finished_project: tuple[Path, str, str], tmp_path: Path) -> None:
    root, _, _ = finished_project
    result = run_cli(root, "report", "mergeline-tiny", "--out", str(tmp_path / "report"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((root / "data/work/eval/metrics.json").read_text())
    record = json.loads((tmp_path / "report" / "report.json").read_text())
    runs = [run for group in record["groups"] for run in group["runs"]]
    assert runs[0]["test"] == metrics["test"] and runs[0]["champion"] == metrics["champion"]
    # every merged variant's method and λ come from its merge run; each method's best has a table row
    assert set(record["variants"]) >= set(metrics["validation"])
    for name, row in metrics["test"].items():
        method = record["variants"][name]["method"]
        assert f"| {method} | " in result.stdout and f"{row['acc/mean']:.3f}" in result.stdout
    assert (tmp_path / "report" / "sweep-1.png").stat().st_size > 0


def test_each_fine_tune_logs_and_records_the_learning_rate_it_used(finished_project: tuple[Path, str, str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    root, _, _ = finished_project
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.run_name LIKE 'fine-tune:%'")
    lr = {r.info.run_name: float(r.data.params["lr"]) for r in runs}
    assert lr == {f"fine-tune:{t}-{m}": TALOS_LR if m == "talos" else FINETUNE_LR
                  for t in ("news", "sentiment") for m in ("full", "talos")}
    for alias in ("champion", "candidate"):
        lineage = json.loads(run_cli(root, "lineage", f"mergeline-tiny@{alias}", "--format", "json").stdout)
        for task in lineage["tasks"]:
            expected = TALOS_LR if task["finetune"]["mode"] == "talos" else FINETUNE_LR
            assert task["finetune"]["params"]["lr"] == expected, (alias, task["name"])
            assert lr[f"fine-tune:{task['name']}-{task['finetune']['mode']}"] == expected


def test_independent_calls_overlap_on_the_flow_s_task_runner(finished_project: tuple[Path, str, str]) -> None:
    """With 2 workers, calls submitted together (the fine-tunes; a round of evaluations) run at once."""
    import mlflow
    from mlflow.tracking import MlflowClient

    root, _, _ = finished_project
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    for stage in ("fine-tune", "evaluate"):
        spans = sorted((r.info.start_time, r.info.end_time) for r in runs
                       if r.data.tags.get("mergeline.stage") == stage)
        assert len(spans) >= 4
        assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), f"no two {stage} calls overlapped"


def test_lineage_verify_and_reproduce_after_a_real_run(finished_project: tuple[Path, str, str]) -> None:
    root, _, _ = finished_project
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


def test_regmean_merges_with_each_task_s_gram_matrices(finished_project: tuple[Path, str, str]) -> None:
    from safetensors import safe_open

    root, _, _ = finished_project
    merged = json.loads((root / "data/work/merged.json").read_text())
    config = merged["regmean_l1"]["config"]
    assert config["merge_method"] == "regmean" and config["parameters"] == {}
    grams = [m["parameters"]["gram"] for m in config["models"]]
    assert grams == [f"data/work/importance/_gram/{t}/gram.safetensors" for t in ("news", "sentiment")]
    with safe_open(str(root / grams[0]), framework="pt") as handle:
        names = set(handle.keys())
        down = handle.get_tensor("model.layers.0.mlp.down_proj.weight")
        aliases = json.loads(handle.metadata()["mergeline.gram_aliases"])
    # q/k/v share one input, gate/up another: 4 stored matrices a layer, the other 3 names aliases
    assert len(names) == 4 * 2 and len(aliases) == 3 * 2 and set(aliases.values()) <= names
    assert down.shape == (128, 128) and bool((down.diagonal() > 0).any())
    # the compute-gram calls ran (one MLflow run each) and the merge was scored like every variant
    assert finished_runs(root, "compute-gram:news") >= 1
    metrics = (root / "data/work/eval/metrics.json").read_text()
    assert "regmean_l1" in metrics


def test_unchanged_rerun_recomputes_nothing(finished_project: tuple[Path, str, str]) -> None:
    root, _, _ = finished_project
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
    # Every task is a cache hit: the run is over in seconds, while Prefect's temporary server is still
    # recording the task runs when it is stopped. A success prints no error and no traceback.
    assert _errors(result.stderr) == [], result.stderr[-4000:]


def test_killed_run_resumes_from_last_finished_stage(tiny_base: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", tiny_base)
    env = {**project_env(root), "MERGELINE_MAX_WORKERS": "1"}  # one call at a time: the kill lands between two
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
     ("merge.methods.ties.densities=[1.5]", "density=1.5"), ("merge.methods.magic={}", "unknown method 'magic'"),
     ("tasks=[news,{name: t, data: {path: my/none.csv}, type: generation, fields: {target: y}}]",
      "my/none.csv: task data file not found")],
)
def test_bad_params_fail_fast(tiny_base: Path, tmp_path: Path, override: str, fragment: str) -> None:
    root = make_project(tmp_path / "project", tiny_base)
    result = run_cli(root, "run", "--params", "params.yaml", "--set", override, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (root / "data/work").exists() and not (root / "mlflow.db").exists()


def test_hostile_user_data_fails_fast(tiny_base: Path, tmp_path: Path) -> None:
    """A data file's oversized CSV field, and a prompt that asks str.format for padding, are one line each."""
    root = make_project(tmp_path / "project", tiny_base)
    (root / "t.csv").write_text("abstract,title\n" + f"{'x' * 200_000},y\n" * 10)
    task = "{name: t, data: {path: t.csv}, type: generation, fields: {text: abstract, target: title}"
    for override, fragment in ((f"tasks=[news,{task}}}]", "t.csv:2: unreadable CSV (field larger than field limit"),
                               (f"tasks=[news,{task}, prompt: '{{text:>1000000000}}'}}]", "tasks.1.prompt: {text:>")):
        result = run_cli(root, "run", "--params", "params.yaml", "--set", override, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]
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
