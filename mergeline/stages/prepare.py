"""Stages ``prepare-data`` and ``import-base``: the experiment's inputs, content-hashed."""

from __future__ import annotations

from typing import Any

from mergeline.stages.common import StageContext, rel, timed


def prepare_data(ctx: StageContext) -> dict[str, Any]:
    """Build each task's and the control set's JSONL splits under ``data_dir`` (seeded)."""
    from mergeline.data import build_task

    p = ctx.params.data
    sizes = {"train": p.n_train, "validation": p.n_validation, "test": p.n_test}
    record: dict[str, Any] = {"tasks": {}}
    with timed(record):
        for task in [*ctx.params.task_names, ctx.params.control]:
            ctx.say(f"prepare-data: {task}")
            # The control set is never trained on: it has no train split.
            task_sizes = {k: v for k, v in {**sizes, **p.sizes.get(task, {})}.items()
                          if k != "train" or task != ctx.params.control}
            built = build_task(task, ctx.data / task, task_sizes, p.seed)
            record["tasks"][task] = {
                split: {"path": rel(ctx.data / task / f"{split}.jsonl", ctx.root), "sha256": sha}
                for split, sha in _split_hashes(built).items()
            }
    return record


def _split_hashes(built: dict[str, Any]) -> dict[str, str]:
    # build_task reports {"files": {"train.jsonl": sha, ...}}; key records by split name.
    return {name.removesuffix(".jsonl"): sha for name, sha in built["files"].items()}


def import_base(ctx: StageContext) -> dict[str, Any]:
    """Import the base model once into ``work_dir/base`` (skipped when already imported)."""
    from mergeline.assets import import_base_model

    out = ctx.work / "base"
    ctx.say(f"import-base: {ctx.params.base_model} -> {rel(out, ctx.root)}")
    record: dict[str, Any] = {}
    with timed(record):
        meta = import_base_model(ctx.params.base_model, out)
    record.update({"id": ctx.params.base_model, "path": rel(out, ctx.root), "sha256": meta["sha256"], "meta": meta})
    return record
