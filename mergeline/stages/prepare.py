"""Stages ``prepare-data`` and ``import-base``: the experiment's inputs, content-hashed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeline.pipeline.records import BaseRecord, DataRecord, FileRef, TaskKind
from mergeline.stages.common import StageContext, rel, timed


def prepare_data(ctx: StageContext, sources: dict[str, str] | None = None) -> DataRecord:
    """Build each task's and the control set's JSONL splits under ``data_dir``.

    Every task is an entry of one mechanism (``mergeline.data.tasks.resolve_task``): built-in tasks are
    built from packaged data with the seeded ``data:`` sizes; user tasks from their files (whose
    sha256 go into ``sources``, and from there into lineage); lm-eval tasks through lm-eval.
    ``sources`` (sha256 of the user data files, read before the call) only keys a cache on them.
    """
    from mergeline.data.tasks import resolve_task, write_task

    p = ctx.params.data
    ctx.used(p.model_dump())
    sizes = {"train": p.n_train, "validation": p.n_validation, "test": p.n_test}
    tasks: dict[str, dict[str, FileRef]] = {}
    found: dict[str, dict[str, str]] = {}
    kinds: dict[str, TaskKind] = {}
    with timed() as clock:
        for entry in [*ctx.params.task_entries, ctx.params.control]:
            name = entry if isinstance(entry, str) else entry.name
            ctx.say(f"prepare-data: {name}")
            # The control set is never trained on: it has no train split.
            task_sizes = {k: v for k, v in {**sizes, **p.sizes.get(name, {})}.items()
                          if k != "train" or name != ctx.params.control}
            built = write_task(resolve_task(entry, ctx.root, task_sizes, p.seed), ctx.data / name, p.seed)
            tasks[name] = {split: FileRef(path=rel(ctx.data / name / f"{split}.jsonl", ctx.root), sha256=sha)
                           for split, sha in _split_hashes(built).items()}
            found[name] = {rel(Path(f), ctx.root): sha for f, sha in built["source_files"].items()}
            kinds[name] = TaskKind(output=built["output"], metric=built["metric"])
    return DataRecord(tasks=tasks, sources=found, kinds=kinds, seconds=clock.seconds)


def _split_hashes(built: dict[str, Any]) -> dict[str, str]:
    # build_task reports {"files": {"train.jsonl": sha, ...}}; key records by split name.
    return {name.removesuffix(".jsonl"): sha for name, sha in built["files"].items()}


def import_base(ctx: StageContext) -> BaseRecord:
    """Import the base model once into ``work_dir/base`` (skipped when already imported)."""
    from mergeline.assets import import_base_model

    out = ctx.work / "base"
    ctx.used({"base_model": ctx.params.base_model})
    ctx.say(f"import-base: {ctx.params.base_model} -> {rel(out, ctx.root)}")
    with timed() as clock:
        meta = import_base_model(ctx.params.base_model, out)
    return BaseRecord(id=ctx.params.base_model, path=rel(out, ctx.root), sha256=meta["sha256"], meta=meta,
                      seconds=clock.seconds)
