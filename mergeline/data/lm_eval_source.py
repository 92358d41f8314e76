"""Tasks of lm-eval (its registry, or a task YAML under ``include_path``) as mergeline task records.

lm-eval's own ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` and ``target_delimiter`` turn each
document into a record, so fine-tuning sees the text lm-eval scores. A task that declares train,
validation and test splits keeps them; otherwise its documents are pooled and split by the seeded
splitter (``split:`` of the entry). Only ``multiple_choice`` and ``generate_until`` tasks are taken.

Errors (MergelineError): a task name that is not in the registry (or not under ``include_path``), a
group rather than one task, data that does not load with the hub offline, another output type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mergeline.assets import ensure_offline
from mergeline.data.task_folder import (
    PYTHON_TAGS,
    TaskYaml,
    code_tags,
    key_holding,
    local_dataset,
    read_files,
    read_task_yaml,
)
from mergeline.data.template_sandbox import TemplateRefused, install, trusted_templates
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


def folder_files(entry: TaskEntry, root: Path) -> tuple[Path, ...]:
    """Every file of an ``include_path`` task's folder, the YAMLs its configs include, and the local data
    they read (paths as :func:`load_task` hands them to lm-eval): what lineage and DVC deps must cover."""
    include = include_folder(entry, root)
    if include is None:
        return ()
    found = _files(include)
    for task in _task_yamls(include):
        found += [*task.files, *read_files(local_dataset(task)[1])]
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)  # one entry per file, as first spelled
    return tuple(unique.values())


def _files(include: Path) -> list[Path]:
    return sorted(p for p in include.rglob("*") if p.is_file()) if include.is_dir() else [include]


def _task_yamls(include: Path) -> list[TaskYaml]:
    """Every task YAML of the folder (or the one file) ``include_path`` names, read as data."""
    found = []
    for config in _files(include):
        if config.suffix not in (".yaml", ".yml"):
            continue
        try:
            found.append(read_task_yaml(config))
        except MergelineError:
            continue  # not a task config: lm-eval reports it if it is the task asked for
    return found


def _refuse_code(entry: TaskEntry, task: TaskYaml) -> None:
    """MergelineError naming the file and key of the first code tag in ``task``'s chain that may not run:
    any, unless ``trust_code``; with it, a PyYAML Python tag, which lm-eval's loader cannot construct."""
    assert entry.lm_eval is not None
    trusted = entry.lm_eval.trust_code
    for file, key, tag in code_tags(task):
        if not trusted:
            raise MergelineError(f"{file}: {key}: {tag} would run Python from the task folder; "
                                 f"set trust_code: true beside include_path (task '{entry.name}') to allow it")
        if tag.tag.startswith(PYTHON_TAGS):
            raise MergelineError(f"{file}: {key}: {tag} is a PyYAML Python tag, which lm-eval does not load; "
                                 "name task code with !function")


def _missing(entry: TaskEntry, include: Path, name: str) -> MergelineError:
    """Why lm-eval's index of ``include`` lacks ``name``: its index skips a YAML that its loader cannot
    read (a ``!!python/`` tag), so the YAML that names the task, read as data, may say."""
    for task in _task_yamls(include):
        if task.config.get("task") == name:
            _refuse_code(entry, task)
    return MergelineError(f"task '{entry.name}': lm-eval task '{name}' does not exist under {include}")


def _folder_config(entry: TaskEntry, yaml_path: Path) -> tuple[dict[str, Any], TaskYaml]:
    """The task's config as lm-eval would load it, with dataset paths anchored at their YAML, and its
    chain. Code a YAML names is refused unless ``trust_code``; with it, lm-eval imports it here."""
    # lm-eval 0.4.13's own loader (the one its TaskManager uses), for the same include merge and !function import
    from lm_eval.tasks._yaml_loader import load_yaml

    assert entry.lm_eval is not None
    task = read_task_yaml(yaml_path)
    trusted = entry.lm_eval.trust_code
    _refuse_code(entry, task)
    try:
        config = load_yaml(task.path, resolve_func=trusted)
    except Exception as exc:  # noqa: BLE001 - the folder's own code fails to import: any type
        first = (str(exc).splitlines() or [""])[0][:200]
        raise MergelineError(f"{task.path}: lm-eval cannot load it ({type(exc).__name__}: {first})") from None
    changes, _ = local_dataset(task)
    kwargs = changes.pop("dataset_kwargs", {})
    config.update(changes)
    if kwargs:
        config["dataset_kwargs"] = {**(config.get("dataset_kwargs") or {}), **kwargs}
    if not trusted:
        # A metric lm-eval does not know is loaded with HF evaluate.load, which runs a local script; the
        # task's metrics are unused here (mergeline scores its records itself).
        config.pop("metric_list", None)
    return config, task


def _refused(entry: TaskEntry, task: TaskYaml | None, exc: TemplateRefused) -> MergelineError:
    """One line naming the YAML file and key whose template the sandbox refused."""
    key = key_holding(task.config, exc.source) if task else None
    if task is None:
        where = f"task '{entry.name}': a template"
    elif key is None:
        where = f"{task.path}: a template"
    else:
        where = f"{task.origin.get(re.split(r'[.[]', key)[0], task.path)}: {key}"
    return MergelineError(f"{where}: template refused by the sandbox ({exc.reason}); set trust_code: true beside "
                          f"include_path (task '{entry.name}') to render it unsandboxed")


def load_task(entry: TaskEntry, root: Path) -> tuple[Any, TaskYaml | None]:
    """The lm-eval Task object, its dataset loaded offline, and its YAML chain (None for a registry task).

    Call inside :func:`trusted_templates`: lm-eval renders the first document while it builds the task.
    """
    assert entry.lm_eval is not None
    ensure_offline()
    import datasets
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()  # preflight's output is its checks' lines (the pipeline's workers disable them too)
    include = include_folder(entry, root)
    # Indexing lm-eval's own 228 task folders costs ~20 s: only for a registry task.
    # Indexing reads YAMLs with !function unresolved: no code runs until a task is built.
    manager = TaskManager(include_path=str(include) if include else None, include_defaults=include is None)
    name = entry.lm_eval.task
    if name not in manager.all_tasks:
        if include is not None:
            raise _missing(entry, include, name)
        raise MergelineError(f"task '{entry.name}': lm-eval task '{name}' does not exist in lm-eval's registry")
    if name not in manager.all_subtasks:
        raise MergelineError(f"task '{entry.name}': lm-eval '{name}' is a group or tag; name one task of it")
    chain = None
    spec: str | dict[str, Any] = name
    if include is not None:
        spec, chain = _folder_config(entry, Path(manager.task_index[name].yaml_path))
    try:
        loaded = manager.load([spec])["tasks"]
    except TemplateRefused as exc:
        raise _refused(entry, chain, exc) from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when the hub is offline
        first = (str(exc).splitlines() or [""])[0][:200]
        raise MergelineError(f"task '{entry.name}': lm-eval task '{name}': its data is not available offline "
                             f"({type(exc).__name__}: {first})") from None
    return loaded[name], chain


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
    """(``multiple_choice`` or ``generation``, split → records) of an lm-eval task.

    A registry task, or a folder task with ``trust_code``, renders its templates as lm-eval does; any
    other folder task's templates render sandboxed (:mod:`mergeline.data.template_sandbox`).
    """
    assert entry.lm_eval is not None
    install()
    with trusted_templates(entry.lm_eval.include_path is None or entry.lm_eval.trust_code):
        task, chain = load_task(entry, root)
        try:
            return _task_splits(entry, task)
        except TemplateRefused as exc:
            raise _refused(entry, chain, exc) from None


def _task_splits(entry: TaskEntry, task: Any) -> tuple[str, dict[str, list[dict[str, Any]]]]:
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
