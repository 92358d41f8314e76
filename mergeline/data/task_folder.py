"""lm-eval task YAMLs of a task folder (``include_path``), read as data: nothing in them runs here.

lm-eval's own loader imports the Python a ``!function`` tag names while it parses the YAML. Here every
tag stays a value (:class:`Tagged`), so the code a task would run is found (:func:`code_tags`) before
lm-eval sees the file. ``include:`` chains are merged as lm-eval 0.4.13 merges them: each included file
in order (its ``task_list`` not inherited), then the file's own keys.

Relative dataset paths: ``datasets.load_dataset`` reads a relative ``dataset_path``, ``data_dir`` or
``data_files`` from the process's working folder. mergeline reads them from the folder of the YAML that
names them (:func:`local_dataset`), hands lm-eval those absolute paths, and hashes the same files
(:func:`read_files`): what lineage records is what lm-eval read.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mergeline.errors import MergelineError

# ``!!`` in a file: ``!!python/name:os.system`` is the tag ``tag:yaml.org,2002:python/name:os.system``.
_YAML_PREFIX = "tag:yaml.org,2002:"
# PyYAML's unsafe loaders import and call what these name; lm-eval's loader cannot construct them at all.
PYTHON_TAGS = f"{_YAML_PREFIX}python/"
# Tags whose value lm-eval (or PyYAML's unsafe loaders) turns into imported Python.
CODE_TAGS = ("!function", PYTHON_TAGS)


@dataclass(frozen=True)
class Tagged:
    """A tagged YAML value, kept as text: ``!function utils.process_docs`` is ``Tagged("!function", "utils.process_docs")``."""

    tag: str
    value: str

    def __str__(self) -> str:
        """The tag as written in the file, then its value, on one line (at most 120 characters of value)."""
        tag = "!!" + self.tag.removeprefix(_YAML_PREFIX) if self.tag.startswith(_YAML_PREFIX) else self.tag
        return f"{tag} {' '.join(self.value.split())[:120]}".rstrip()


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.ScalarNode):
        value: object = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)  # arguments (``apply:os.system ['touch x']``)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return Tagged(str(node.tag), str(value))


class _DataLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, every ``!tag`` (and ``!!python/...``) read as a :class:`Tagged` value."""


_DataLoader.add_multi_constructor("!", _tagged)
_DataLoader.add_multi_constructor(PYTHON_TAGS, _tagged)


@dataclass(frozen=True)
class TaskYaml:
    """One task YAML merged over its ``include:`` chain."""

    path: Path
    config: dict[str, Any]  # as lm-eval merges it (local keys win)
    origin: dict[str, Path]  # top-level key -> the file whose value won
    files: tuple[Path, ...]  # this file, then every file it includes
    own: tuple[tuple[Path, dict[str, Any]], ...]  # each file's own keys, as written


def read_task_yaml(path: Path) -> TaskYaml:
    """``path`` and its include chain, read as data. MergelineError names a file that does not read."""
    return _read(path.resolve(), ())


def _read(path: Path, seen: tuple[Path, ...]) -> TaskYaml:
    if path in seen:
        raise MergelineError(f"{path}: include cycle ({' -> '.join(p.name for p in (*seen, path))})")
    try:
        own = yaml.load(path.read_text(encoding="utf-8"), Loader=_DataLoader)  # noqa: S506 - safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MergelineError(f"{path}: not a readable task YAML ({type(exc).__name__})") from None
    if not isinstance(own, dict):
        raise MergelineError(f"{path}: not a task config (a YAML mapping)")
    includes = own.get("include")
    config: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    files, owns = [path], [(path, own)]
    for item in includes if isinstance(includes, list) else ([] if includes is None else [includes]):
        if not isinstance(item, str):
            raise MergelineError(f"{path}: include: {item!r} is not a file name")
        parent = _read((Path(item) if Path(item).is_absolute() else path.parent / item).resolve(), (*seen, path))
        inherited = {k: v for k, v in parent.config.items() if k != "task_list"}
        config.update(inherited)
        origin.update({k: parent.origin[k] for k in inherited})
        files += parent.files
        owns += parent.own
    local = {k: v for k, v in own.items() if k != "include"}
    config.update(local)
    origin.update(dict.fromkeys(local, path))
    return TaskYaml(path, config, origin, tuple(dict.fromkeys(files)), tuple(owns))


def code_tags(task: TaskYaml) -> list[tuple[Path, str, Tagged]]:
    """(file, key, tag) of every value in the chain that lm-eval would import as Python.

    Every file counts, overridden keys too: lm-eval imports while it parses, before keys are merged.
    """
    return [(file, key, tag) for file, own in task.own for key, tag in _walk(own, "")
            if tag.tag.startswith(CODE_TAGS)]


def _walk(value: Any, key: str) -> Iterator[tuple[str, Tagged]]:
    if isinstance(value, Tagged):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            name = f"{key}.{k}" if key else str(k)
            if isinstance(k, Tagged):
                yield name, k
            yield from _walk(v, name)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{key}[{i}]")


def key_holding(config: dict[str, Any], text: str) -> str | None:
    """The key (``doc_to_text``, ``fewshot_config.doc_to_text``, ``doc_to_choice[1]``) whose value is ``text``."""
    def find(value: Any, key: str) -> str | None:
        if value == text and isinstance(value, str):
            return key
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for k, v in items:
            found = find(v, f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None

    return find(config, "")


@cache
def _packaged_builders() -> frozenset[str]:
    # datasets' file-format builders (json, csv, parquet, ...): a dataset_path that names one is not a folder
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return frozenset(_PACKAGED_DATASETS_MODULES)


def _anchor(path: str, folder: Path) -> str:
    given = Path(path).expanduser()
    return str(given if given.is_absolute() else folder / given)


def _anchored(value: Any, folder: Path) -> Any:
    """``data_files`` (a path, a list, or split -> path(s)) with each local relative path made absolute."""
    if isinstance(value, str):
        return value if "://" in value else _anchor(value, folder)
    if isinstance(value, list):
        return [_anchored(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _anchored(v, folder) for k, v in value.items()}
    return value


def _paths(value: Any) -> list[str]:
    if isinstance(value, str):
        return [] if "://" in value else [value]
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [p for v in values for p in _paths(v)]


def local_dataset(task: TaskYaml) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(config changes, local paths lm-eval then reads): relative dataset paths anchored at their YAML.

    A builder name (``dataset_path: json``) reads ``data_files`` (else every file of ``data_dir``, else
    of the YAML's folder) from the folder of the YAML that set ``dataset_kwargs``; a ``dataset_path``
    that is a local folder is read from the folder of the YAML that set it, and ``datasets`` reads its
    ``data_dir`` and ``data_files`` inside it. Anything else (a hub dataset) reads nothing local.
    """
    source = task.config.get("dataset_path")
    kwargs = task.config.get("dataset_kwargs")
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    data_files, data_dir = kwargs.get("data_files"), kwargs.get("data_dir")
    if not isinstance(source, str) or any(isinstance(t, Tagged) for _, t in _walk(kwargs, "")):
        return {}, ()
    if source in _packaged_builders():
        named_in = task.origin.get("dataset_kwargs", task.path).parent
        base = Path(_anchor(data_dir, named_in)) if isinstance(data_dir, str) else named_in
        if data_files is None:
            return {"dataset_kwargs": {"data_dir": str(base)}}, (str(base),)
        changes: dict[str, Any] = {"data_files": _anchored(data_files, base)}
        if isinstance(data_dir, str):
            changes["data_dir"] = str(base)
        return {"dataset_kwargs": changes}, tuple(_paths(changes["data_files"]))
    folder = Path(_anchor(source, task.origin.get("dataset_path", task.path).parent))
    if not folder.exists():
        return {}, ()
    inside = folder / data_dir if isinstance(data_dir, str) else folder
    reads = [_anchor(p, inside) for p in _paths(data_files)] if data_files is not None else [str(inside)]
    return {"dataset_path": str(folder)}, tuple(reads)


def read_files(paths: tuple[str, ...]) -> list[Path]:
    """The files behind local paths: a file, every file of a folder, every file a glob pattern matches."""
    found: list[Path] = []
    for path in paths:
        if any(c in path for c in "*?["):
            found += sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        elif Path(path).is_dir():
            found += sorted(p for p in Path(path).rglob("*") if p.is_file())
        elif Path(path).is_file():
            found.append(Path(path))
    return found
