"""A tiny registered model with a complete lineage, for the registry and lineage CLI tests.

``build_project(root)`` writes, under ``root``: a tiny random Llama base (``base/``), two "fine-tunes"
(base plus seeded noise) and their task vectors (``vectors/<task>/``), JSONL datasets
(``data/<task>/train.jsonl``), an importance file, a params file and a merged model
(``merged/``, task arithmetic via ``run_merge``) whose lineage records root-relative paths, as the
pipeline does. ``register_project`` registers it in a fresh SQLite MLflow store under ``root``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mergeline.lineage.record import (
    BaseModelRef, CodeInfo, FineTune, ImportanceArtifact, Lineage, MergeInfo, MlflowInfo, TaskLineage,
)
from mergeline.lineage.build import describe, dvc_info, params_info

TASKS = ("alpha", "beta")
MODEL_NAME = "tiny-merged"


@dataclass
class Project:
    root: Path
    lineage: Lineage
    config: dict


def merge_config() -> dict:
    return {"merge_method": "task_arithmetic", "base_model": "base",
            "models": [{"model": f"vectors/{t}", "parameters": {"weight": 1.0}} for t in TASKS],
            "parameters": {"lambda": 0.5}, "dtype": "float32"}


def absolute_config(config: dict, root: Path) -> dict:
    """``config`` with its model paths made absolute under ``root``."""
    return {**config, "base_model": str(root / config["base_model"]),
            "models": [{**m, "model": str(root / m["model"])} for m in config["models"]]}


def build_project(root: Path, tokenizer: Path | None = None) -> Project:
    """``tokenizer``: a folder whose tokenizer files the base (and so the merge) gets, vocabulary sized to it."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergeline.merge.config import MergeConfig
    from mergeline.finetune.checkpoint import extract_task_vector
    from mergeline.merge.engine import run_merge

    vocab = len(json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]) if tokenizer else 128
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    base.save_pretrained(root / "base")
    for name in (sorted(p.name for p in tokenizer.iterdir() if p.is_file()) if tokenizer else []):
        shutil.copyfile(tokenizer / name, root / "base" / name)
    tasks = []
    for i, task in enumerate(TASKS):
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            tuned = LlamaForCausalLM(cfg).eval()
            tuned.load_state_dict(base.state_dict())
            for p in tuned.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        tuned.save_pretrained(root / "ft" / task)
        extract_task_vector(root / "base", root / "ft" / task, root / "vectors" / task)
        data = root / "data" / task / "train.jsonl"
        data.parent.mkdir(parents=True)
        data.write_text("".join(json.dumps({"id": f"{task}-{k}", "prompt": f"{task} {k}", "choices": ["a", "b"],
                                            "label": k % 2}) + "\n" for k in range(4)))
        (root / "importance" / task).mkdir(parents=True)
        (root / "importance" / task / "stats.json").write_text(json.dumps({"task": task, "norm": 1.0 + i}))
        tasks.append(TaskLineage(
            name=task, datasets={"train": describe(f"data/{task}/train.jsonl", root=root)},
            finetune=FineTune(mode="full", run_id=f"ft-run-{task}", params={"lr": 1e-4, "steps": 4},
                              metrics={"final_loss": 1.5 - i}),
            vector=describe(f"vectors/{task}", root=root),
            importance=[describe(f"importance/{task}/stats.json", ImportanceArtifact, root=root, kind="stats")],
        ))
    (root / "params.yaml").write_text("merge:\n  lambda: 0.5\n")
    config = merge_config()
    result = run_merge(MergeConfig.model_validate(absolute_config(config, root)), root / "merged")
    lineage = Lineage(
        base_model=describe("base", BaseModelRef, root=root, id="tiny-llama-random"),
        tasks=tasks,
        merge=MergeInfo(method="task_arithmetic", config=config, coefficients={"lambda": 0.5, **dict.fromkeys(TASKS, 1.0)}),
        evaluation={"validation/alpha/acc": 0.5, "validation/beta/acc": 0.75},
        code=CodeInfo(git_commit="0" * 40, dirty=False), dvc=dvc_info(root),
        mlflow=MlflowInfo(stage_run_ids={"merge": "merge-run"}),
        params=params_info(root / "params.yaml").model_copy(update={"path": "params.yaml"}),
        weights=result.weight_sha256,
    )
    return Project(root=root, lineage=lineage, config=config)


@contextmanager
def tracking_store(root: Path, experiment: str = "lineage-tests") -> Iterator[str]:
    """A fresh SQLite store under ``root`` for the duration; the process-global URI is restored after."""
    import os

    import mlflow

    from mergeline.tracking import configure_tracking

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield configure_tracking(f"sqlite:///{root}/mlflow.db", experiment)
    finally:
        mlflow.set_tracking_uri(None)  # also drops the MLFLOW_TRACKING_URI that set_tracking_uri exported
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


def flip_byte(path: Path, offset: int = -1) -> None:
    """Invert one byte of ``path`` (default: the last one, inside the tensor data of a safetensors file)."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _pristine(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    # Built once per session (transformers import + two tiny models: ~10 s); tests copy it.
    root = tmp_path_factory.getbasetemp() / "lineage-pristine"
    if not (root / "lineage.json").is_file():
        project = build_project(root)
        (root / "lineage.json").write_text(project.lineage.to_json())
    return root


def copy_project(tmp_path_factory, name: str) -> Project:  # type: ignore[no-untyped-def]
    """A private copy of the session's pristine project under a fresh folder ``name``."""
    import shutil

    source = _pristine(tmp_path_factory)
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(source, root, dirs_exist_ok=True)
    lineage = Lineage.model_validate_json((root / "lineage.json").read_text())
    (root / "lineage.json").unlink()
    return Project(root=root, lineage=lineage, config=lineage.merge.config)
