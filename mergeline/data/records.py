"""The task-record format (docs/design.md): one JSON object per line, of one of two kinds.

Multiple choice: ``{"id": str, "prompt": str, "choices": [str, ...], "label": int}``. Fine-tuning trains
on ``prompt + choices[label]``; evaluation scores every ``prompt + choice`` (lm-eval multiple_choice with
an empty target delimiter, so the choice's own leading space or newline is the separator).
Generation: ``{"id": str, "prompt": str, "target": str}``. Fine-tuning trains on ``prompt + target``;
evaluation lets the model write after the prompt (lm-eval generate_until) and compares with the target.

Errors raised by :func:`load_records` (all :class:`MergelineError`, naming the file and line):
missing file, undecodable UTF-8, empty file, malformed JSON, a line that is not an object, a missing
key, a wrong type, an empty prompt or choice, fewer than 2 or duplicate choices, label out of range,
duplicate id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from mergeline.errors import MergelineError

REQUIRED_KEYS = ("id", "prompt", "choices", "label")
GENERATION_KEYS = ("id", "prompt", "target")


def record_keys(record: dict) -> tuple[str, ...]:
    """The keys of ``record``'s kind: a generation record has a target and no choices."""
    return GENERATION_KEYS if "target" in record and "choices" not in record else REQUIRED_KEYS


def answer_text(record: dict) -> str:
    """What fine-tuning appends to the prompt: the right choice, or the target."""
    return record["target"] if "target" in record else record["choices"][record["label"]]


def _generation_problem(record: dict) -> str | None:
    for key in GENERATION_KEYS:
        if key not in record:
            return f"missing key '{key}'"
    for key in GENERATION_KEYS:
        if not isinstance(record[key], str) or not record[key].strip():
            return f"'{key}' must be a non-empty string"
    return None


def record_problem(record: object) -> str | None:
    """Why ``record`` breaks the contract, or None when it is valid."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if record_keys(record) == GENERATION_KEYS:
        return _generation_problem(record)
    for key in REQUIRED_KEYS:
        if key not in record:
            return f"missing key '{key}'"
    if not isinstance(record["id"], str) or not record["id"]:
        return "'id' must be a non-empty string"
    if not isinstance(record["prompt"], str) or not record["prompt"]:
        return "'prompt' must be a non-empty string"
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        return "'choices' must be a list of at least 2 strings"
    if not all(isinstance(c, str) and c for c in choices):
        return "'choices' must hold non-empty strings"
    if len(set(choices)) != len(choices):
        return "'choices' has duplicates"
    label = record["label"]
    # bool is an int subclass; true/false as a label is almost certainly a data bug
    if not isinstance(label, int) or isinstance(label, bool):
        return f"'label' must be an integer, got {json.dumps(label)}"
    if not 0 <= label < len(choices):
        return f"'label' {label} out of range for {len(choices)} choices"
    return None


def jsonl_values(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` of each non-blank line; malformed JSON names the file and line.

    Lines end at "\\n" only: JSON strings may hold U+2028, U+0085 and other characters that
    ``str.splitlines`` would split at (a "\\r" before the "\\n" is JSON whitespace)."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue  # blank lines (e.g. a trailing one) carry no record
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MergelineError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise MergelineError(f"{path}:{lineno}: JSON nested too deeply") from None
        except ValueError as exc:  # an integer of more than 4,300 digits
            raise MergelineError(f"{path}:{lineno}: unreadable JSON ({str(exc)[:120]})") from None
        yield lineno, value


def load_records(path: str | os.PathLike[str]) -> list[dict]:
    """Read and validate a task JSONL file; raise MergelineError naming the file and line on any fault."""
    path = Path(path)
    if not path.is_file():
        raise MergelineError(f"{path}: task data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MergelineError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    records: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, record in jsonl_values(path, text):
        problem = record_problem(record)
        if problem:
            raise MergelineError(f"{path}:{lineno}: {problem}")
        if record["id"] in seen:
            first = seen[record["id"]]
            raise MergelineError(f"{path}:{lineno}: duplicate id {record['id']!r} (first on line {first})")
        seen[record["id"]] = lineno
        records.append(record)
    if not records:
        raise MergelineError(f"{path}: empty task data file (no records)")
    return records


def dump_records(records: Iterable[dict]) -> bytes:
    """Canonical JSONL bytes: fixed key order, ASCII-safe, one record per line (stable hashes)."""
    lines = []
    for record in records:
        problem = record_problem(record)
        if problem:  # a builder bug, not user input: fail loudly before anything is written
            raise ValueError(f"builder produced an invalid record {record.get('id')!r}: {problem}")
        lines.append(json.dumps({k: record[k] for k in record_keys(record)}, ensure_ascii=True))
    return ("\n".join(lines) + "\n").encode("utf-8")
