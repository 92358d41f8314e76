"""Tasks of lm-eval (its registry, or a task YAML under ``include_path``) as mergeline task records.

lm-eval's own ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` and ``target_delimiter`` turn each
document into a record, so fine-tuning sees the text lm-eval scores. A task that declares train,
validation and test splits keeps them; otherwise its documents are pooled and split by the seeded
splitter (``split:`` of the entry). Only ``multiple_choice`` and ``generate_until`` tasks are taken.

Errors (MergelineError): a task name that is not in the registry (or not under ``include_path``), a
group rather than one task, data that does not load with the hub offline, another output type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mergeline.assets import ensure_offline
from mergeline.data.user import split_records
from mergeline.errors import MergelineError
from mergeline.task_params import TaskEntry

OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "generate_until": "generation"}


def include_folder(entry: TaskEntry, root: Path) -> Path | None:
    assert entry.lm_eval is not None
    if entry.lm_eval.include_path is None:
        return None
    path = Path(entry.lm_eval.include_path)
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise MergelineError(f"task '{entry.name}': lm_eval.include_path {path} does not exist")
    return path


class _AnyTagLoader(yaml.SafeLoader):
    """lm-eval task YAMLs use ``!function`` tags: read them as plain values, only ``dataset_kwargs`` matters."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def local_data_files(config_file: Path) -> list[Path]:
    """The local files a task YAML's ``dataset_kwargs.data_files`` names (relative ones from the YAML's folder)."""
    try:
        config = yaml.load(config_file.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506 - safe subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # not a task config: lm-eval reports it when it reads the folder
    named = ((config or {}).get("dataset_kwargs") or {}).get("data_files") if isinstance(config, dict) else None
    values = named.values() if isinstance(named, dict) else [named]
    paths = [v for value in values for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    found = [Path(p) if Path(p).is_absolute() else config_file.parent / p for p in paths]
    return [p for p in found if p.is_file()]


def load_task(entry: TaskEntry, root: Path) -> Any:
    """The lm-eval Task object, its dataset loaded offline."""

    assert entry.lm_eval is not None
    ensure_offline()
    from lm_eval.tasks import TaskManager

    include = include_folder(entry, root)
    # Indexing lm-eval's own 228 task folders costs ~20 s: only for a registry task.
    manager = TaskManager(include_path=str(include) if include else None, include_defaults=include is None)
    name = entry.lm_eval.task
    where = f"under {include}" if include else "in lm-eval's registry"
    if name not in manager.all_tasks:
        raise MergelineError(f"task '{entry.name}': lm-eval task '{name}' does not exist {where}")
    if name not in manager.all_subtasks:
        raise MergelineError(f"task '{entry.name}': lm-eval '{name}' is a group or tag; name one task of it")
    try:
        loaded = manager.load_task_or_group([name])
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when the hub is offline
        first = (str(exc).splitlines() or [""])[0][:200]
        raise MergelineError(f"task '{entry.name}': lm-eval task '{name}': its data is not available offline "
                             f"({type(exc).__name__}: {first})") from None
    return loaded[name]


def _record(task: Any, doc: dict, output: str, record_id: str, where: str) -> dict[str, Any]:
    prompt = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    delimiter = task.config.target_delimiter
    if output == "generation":
        target = target[0] if isinstance(target, list) else target
        return {"id": record_id, "prompt": str(prompt), "target": delimiter + str(target)}
    choices = [str(c) for c in task.doc_to_choice(doc)]
    label = choices.index(target) if isinstance(target, str) and target in choices else target
    if not isinstance(label, int) or not 0 <= label < len(choices):
        raise MergelineError(f"{where}: target {target!r} is not one of the {len(choices)} choices")
    return {"id": record_id, "prompt": str(prompt), "choices": [delimiter + c for c in choices], "label": label}


def lm_eval_task_splits(entry: TaskEntry, root: Path) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """(``multiple_choice`` or ``generation``, split → records) of an lm-eval task."""

    task = load_task(entry, root)
    name = entry.lm_eval.task  # type: ignore[union-attr]
    output = OUTPUT_TYPES.get(task.OUTPUT_TYPE)
    if output is None:
        raise MergelineError(f"task '{entry.name}': lm-eval task '{name}' is {task.OUTPUT_TYPE}; "
                             f"only {', '.join(OUTPUT_TYPES)} tasks can be fine-tuned and merged")
    present = {"train": task.has_training_docs(), "validation": task.has_validation_docs(),
               "test": task.has_test_docs()}
    docs = {split: list((task.training_docs, task.validation_docs, task.test_docs)[i]())
            for i, (split, has) in enumerate(present.items()) if has}
    records = {split: [_record(task, doc, output, f"{entry.name}/{split}/{i}", f"lm-eval task '{name}' {split}[{i}]")
                       for i, doc in enumerate(rows)] for split, rows in docs.items()}
    if all(present.values()) and all(records.values()):
        return output, records
    pooled = [r for split in ("train", "validation", "test") for r in records.get(split, [])]
    if not pooled:
        raise MergelineError(f"task '{entry.name}': lm-eval task '{name}' has no documents")
    s = entry.split
    return output, split_records(pooled, s.validation, s.test, s.seed, f"lm-eval task '{name}'")
