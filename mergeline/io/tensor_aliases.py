"""Tensor aliases: names a safetensors file answers to without storing their data again.

A file that would hold the same tensor under several names (RegMean's Gram matrices, where linear layers
that read one input share one XᵀX) stores it once, under one name, and lists every other name in its
header metadata: ``__metadata__[ALIASES_KEY]`` is the JSON object ``{alias: stored name}``. Readers that
look tensors up by name resolve an alias to its stored name; a file without the key has no aliases, so
files written before aliases existed read as they always did.

An alias that names a tensor the file does not hold, that is itself stored, that leads back to itself
(a cycle), or metadata that is not a JSON object of names is refused: one line naming the file and the
alias.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path

from mergeline.errors import MergelineError
from mergeline.io.safetensors_format import read_metadata
from mergeline.io.safetensors_io import CheckpointReader

ALIASES_KEY = "mergeline.gram_aliases"


def aliases_metadata(aliases: Mapping[str, str]) -> dict[str, str]:
    """The header metadata that records ``aliases`` (alias → stored name); empty when there are none."""
    if not aliases:
        return {}
    return {ALIASES_KEY: json.dumps(dict(sorted(aliases.items())), separators=(",", ":"))}


def read_aliases(path: Path, stored: Collection[str]) -> dict[str, str]:
    """Alias → stored name from ``path``'s header (chains of aliases followed to the stored tensor),
    checked against ``stored``, the names the file (or its checkpoint) holds."""
    raw = read_metadata(path).get(ALIASES_KEY)
    if raw is None:
        return {}
    try:
        table = json.loads(raw)
    except (ValueError, RecursionError):
        raise MergelineError(f"{path}: header metadata {ALIASES_KEY!r} is not valid JSON") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise MergelineError(f"{path}: header metadata {ALIASES_KEY!r} must map tensor names to tensor names")
    resolved = {}
    for alias, target in table.items():
        if alias in stored:
            raise MergelineError(f"{path}: tensor {alias!r} is both stored and listed as an alias")
        chain = [alias]
        while target in table:
            if target in chain:
                raise MergelineError(f"{path}: alias {alias!r} is a cycle ({' -> '.join([*chain, target])})")
            chain.append(target)
            target = table[target]
        if target not in stored:
            raise MergelineError(f"{path}: alias {alias!r} points at tensor {target!r}, which the file does not hold")
        resolved[alias] = target
    return resolved


def reader_aliases(reader: CheckpointReader) -> dict[str, str]:
    """Every alias of the files behind ``reader`` (none for tensors held in memory)."""
    stored = set(reader.names())
    aliases: dict[str, str] = {}
    for file in reader.stored_files():
        aliases.update(read_aliases(file, stored))
    return aliases
