"""Reading user files that may be hostile: bounded, regular files only, strict UTF-8, bounded YAML.

Every YAML the user hands mergeline (params files, ``--set`` values, merge configs) goes through
:func:`load_yaml_file` or :func:`load_yaml_text`:

- only a regular file is read (``/dev/zero``, a FIFO or a folder given as a file is refused before it
  is opened: opening a FIFO blocks, reading ``/dev/zero`` never ends), and at most ``MAX_TEXT_BYTES``;
- the bytes must be UTF-8 (the error names the file and the byte offset);
- the document is bounded (``MAX_YAML_NODES`` nodes) twice. As written: the events of the text are
  counted (libyaml's parser where installed) and reading stops at the first one over the bound, so
  a few MiB of ``[a,a,a,...]`` is refused in a fraction of a second rather than composed into
  millions of nodes first. Once aliases are expanded: PyYAML shares an aliased node, so nine lines
  of nested aliases ("billion laughs") are cheap to load and explode only later, when the value is
  validated, copied or printed; the expanded size is counted on the node graph before anything is
  constructed, and a recursive alias is refused too.

Errors are :class:`MergelineError` naming the file (CLI: one line, exit 2).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from mergeline.errors import MergelineError

MAX_TEXT_BYTES = 8 * 2**20  # a config or params file; a lineage record is far below this
MAX_YAML_NODES = 100_000  # nodes after alias expansion; a full mergekit config is a few hundred
MAX_YAML_DEPTH = 100  # nesting levels; libyaml's composer recurses in C and crashes on deep nesting
# libyaml's parser and composer are C: the pure-Python ones take seconds for 100,000 nodes.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text_file(path: str | os.PathLike[str], what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path`` (``what``: "config", "params file"...), bounded."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MergelineError(f"{path}: cannot read {what} (no such file)") from None
    except OSError as exc:
        raise MergelineError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise MergelineError(f"{path}: is a folder, expected a {what} file")
    if not stat.S_ISREG(info.st_mode):
        raise MergelineError(f"{path}: not a regular file (a device or pipe), expected a {what} file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise MergelineError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > limit:
        raise MergelineError(f"{path}: {what} larger than {limit // 2**20} MiB; refusing to read it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MergelineError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def _expanded_size(root: yaml.Node, where: str, limit: int) -> int:
    """Nodes of the document once every alias is expanded (each shared node counted per use)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # Iterative post-order walk: a deeply nested document must not hit Python's recursion limit.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            if total > limit:
                raise MergelineError(
                    f"{where}: YAML expands to more than {limit} nodes (nested aliases); refusing to load it"
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise MergelineError(f"{where}: YAML has a recursive alias; refusing to load it")
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_written_size(text: str, where: str, limit: int) -> None:
    """Refuse a document with more than ``limit`` nodes as written, or nested deeper than
    ``MAX_YAML_DEPTH``, from its events alone: nothing of it is composed yet."""
    loader = _Loader(text)
    try:
        count = depth = 0
        while (event := loader.get_event()) is not None:
            if isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
                count += 1
                if count > limit:
                    raise MergelineError(f"{where}: YAML has more than {limit} nodes; refusing to load it")
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_YAML_DEPTH:
                        raise MergelineError(f"{where}: YAML nested more than {MAX_YAML_DEPTH} levels deep; "
                                             "refusing to load it")
    finally:
        loader.dispose()


def load_yaml_text(text: str, where: str, limit: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load(text)`` with both size bounds; errors name ``where`` and the line."""
    try:
        _check_written_size(text, where, limit)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _expanded_size(node, where, limit)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise MergelineError(f"{where}: unreadable YAML{at}: {problem}") from None
    except RecursionError:
        raise MergelineError(f"{where}: YAML nested too deeply; refusing to load it") from None


def load_yaml_file(path: str | os.PathLike[str], what: str, limit: int = MAX_YAML_NODES) -> Any:
    """The YAML document of the regular UTF-8 file ``path``, bounded (see the module docstring)."""
    return load_yaml_text(read_text_file(path, what), str(path), limit)
