"""The pipeline with existing task models as inputs: one task given as a fine-tuned checkpoint, one as a
PEFT LoRA adapter built here. Real Prefect, MLflow, DVC and lm-eval; nothing is fine-tuned, and the
champion's lineage names each given input and its files by hash (``--verify`` re-hashes them). A DoRA
adapter is refused first, in one line, before anything is written.
(The LoRA fine-tune stage is tested without a flow, in tests/unit/test_stage_lora.py, to keep this
one test's time down.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeline.io.hashing import sha256_dir, sha256_file
from tests.integration.pipeline_project import (
    finished_runs, given_checkpoint, make_project, run_cli, shared_tiny_base,
)
from tests.lora_fixtures import build_lora_adapter

pytestmark = pytest.mark.slow


def test_checkpoint_and_adapter_tasks(tmp_path: Path) -> None:
    tiny_base = shared_tiny_base()
    models = tmp_path / "models"
    checkpoint = given_checkpoint(tiny_base, models / "sentiment-ft")
    adapter = build_lora_adapter(tiny_base, models / "news-lora", seed=1, r=2, lora_alpha=4)
    root = make_project(
        tmp_path / "project", tiny_base,
        tasks=[{"name": "news", "adapter": str(adapter)}, {"name": "sentiment", "checkpoint": str(checkpoint)}],
        talos={"enabled": False},
        merge={"methods": {"task_arithmetic": {"lambdas": [1.0]}}},
    )
    dora = build_lora_adapter(tiny_base, models / "news-dora", seed=1, r=2, use_dora=True)
    bad = run_cli(root, "run", "--params", "params.yaml", "--set", f"tasks=[{{name: news, adapter: {dora}}}]",
                  timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "tasks: news:" in bad.stderr and "DoRA" in bad.stderr
    assert not (root / "data/work").exists() and not (root / "mlflow.db").exists()

    result = run_cli(root, "run", "--params", "params.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "given adapter for news" in result.stdout and "given checkpoint for sentiment" in result.stdout
    assert finished_runs(root, "fine-tune:news-full") == 0 and finished_runs(root, "fine-tune:sentiment-full") == 0
    assert finished_runs(root, "import-task-model:news") == 1

    lineage = json.loads(run_cli(root, "lineage", "mergeline-tiny@champion", "--format", "json").stdout)
    tasks = {t["name"]: t for t in lineage["tasks"]}
    assert tasks["news"]["source"] == "adapter" and tasks["sentiment"]["source"] == "checkpoint"
    assert tasks["news"]["finetune"] is None and tasks["sentiment"]["finetune"] is None
    assert tasks["news"]["given"]["sha256"] == sha256_dir(adapter)
    assert tasks["news"]["given"]["files"]["adapter_model.safetensors"]["sha256"] == \
        sha256_file(adapter / "adapter_model.safetensors")
    assert tasks["sentiment"]["given"]["sha256"] == sha256_dir(checkpoint)
    assert tasks["sentiment"]["given"]["files"]["model.safetensors"]["sha256"] == sha256_file(checkpoint / "model.safetensors")
    verify = run_cli(root, "lineage", "mergeline-tiny@champion", "--verify")
    assert verify.returncode == 0, verify.stderr
    metrics = json.loads((root / "data/work/eval/metrics.json").read_text())
    assert metrics["champion"] == "ta_l1" and 0.0 <= metrics["test"]["ta_l1"]["acc/news"] <= 1.0
