"""The pipeline on an lm-eval task folder (``include_path``) whose YAML names its data file relatively, with
a file of the same name in the project folder: the task is built from the file beside the YAML, the
champion's lineage hashes that file, and editing it fails ``lineage --verify``. Real Prefect, MLflow,
DVC and lm-eval; both task models are given checkpoints, so nothing is fine-tuned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergeline.io.hashing import sha256_file
from tests.integration.pipeline_project import given_checkpoint, make_project, run_cli, shared_tiny_base

pytestmark = pytest.mark.slow


def _rows(path: Path, tag: str, n: int = 24) -> None:
    path.write_text("".join(json.dumps({"q": f"{tag} {i}", "options": ["yes", "no"], "gold": i % 2}) + "\n"
                            for i in range(n)), encoding="utf-8")


def test_lineage_hashes_the_data_file_lm_eval_reads(tmp_path: Path) -> None:
    tiny_base = shared_tiny_base()
    root = make_project(
        tmp_path / "project", tiny_base,
        tasks=[{"name": "qa", "lm_eval": {"task": "my_qa", "include_path": "lm_tasks"},
                "checkpoint": str(given_checkpoint(tiny_base, tmp_path / "models" / "qa-ft", seed=3))},
               {"name": "sentiment", "checkpoint": str(given_checkpoint(tiny_base, tmp_path / "models" / "s-ft"))}],
        talos={"enabled": False}, merge={"methods": {"task_arithmetic": {"lambdas": [1.0]}}},
    )
    folder = root / "lm_tasks"
    folder.mkdir()
    (folder / "qa.yaml").write_text(yaml.safe_dump({
        "task": "my_qa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "qa.jsonl"}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "Q: {{q}}\nA:",
        "doc_to_choice": "options", "doc_to_target": "gold"}), encoding="utf-8")
    _rows(folder / "qa.jsonl", "beside")
    _rows(root / "qa.jsonl", "decoy")  # where lm-eval used to look: the working folder

    result = run_cli(root, "run", "--params", "params.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    prompts = [json.loads(line)["prompt"] for split in ("train", "validation", "test")
               for line in (root / "data/tasks/qa" / f"{split}.jsonl").read_text().splitlines()]
    assert prompts and all(p.startswith("Q: beside ") for p in prompts)

    lineage = json.loads(run_cli(root, "lineage", "mergeline-tiny@champion", "--format", "json").stdout)
    sources = next(t["datasets"] for t in lineage["tasks"] if t["name"] == "qa")
    assert sources["source:lm_tasks/qa.jsonl"]["sha256"] == sha256_file(folder / "qa.jsonl")
    assert not any(name.endswith(":qa.jsonl") for name in sources)  # the decoy is not an input
    verify = run_cli(root, "lineage", "mergeline-tiny@champion", "--verify")
    assert verify.returncode == 0, verify.stderr

    _rows(folder / "qa.jsonl", "edited")
    verify = run_cli(root, "lineage", "mergeline-tiny@champion", "--verify")
    assert verify.returncode == 1 and "mismatch: lm_tasks/qa.jsonl" in verify.stderr, verify.stderr
