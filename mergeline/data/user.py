"""User tasks from local data files: rows of a JSONL or CSV file → task records, split by a seeded splitter.

A row becomes a multiple-choice record (``fields.choices`` a list, or in CSV a JSON list or
``a|b|c``; ``fields.label`` an index or the right choice's text) or a generation record
(``fields.target``). The prompt is ``entry.prompt`` with ``{text}`` (the ``fields.text`` column) and
any other column in braces filled in: substitution only (no attribute or index access, conversion or
format specification: ``mergeline.task_params.prompt_parts``). JSONL lines end at "\\n" only, so
strings may hold U+2028 or U+0085. Answers get one leading space unless the prompt ends in
whitespace or the answer starts with it, since fine-tuning appends the answer to the prompt as is.

Errors (MergelineError, naming the file, line and field; raised by :func:`user_task_splits` before
anything is written): missing file, unknown extension, non-UTF-8 bytes, empty file, malformed JSON,
JSON nested too deeply or holding an integer of more than 4,300 digits, a line that is not an
object, unreadable CSV (a field over ``csv.field_size_limit()``, 131,072 characters), a missing
field, an empty value, choices that are not a list of at least two distinct strings, a label outside
the choices (a label of more than 18 digits is no index), a prompt field that is not in the row, a
split that would be empty, and test examples that are training examples of the given split files.
Duplicates and other shared examples are warnings (``mergeline.data.overlap``).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path
from typing import Any

from mergeline.data.overlap import Warn, check_given_splits, check_split_file
from mergeline.data.records import jsonl_values
from mergeline.errors import MergelineError
from mergeline.task_params import TaskEntry, prompt_parts

SUFFIXES = (".jsonl", ".csv")
_INDEX = re.compile(r"[+-]?[0-9]{1,18}")  # a label index written as text; longer is no index of a choice


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a local ``.jsonl`` or ``.csv`` file (header line 1 for CSV)."""
    if path.suffix.lower() not in SUFFIXES:
        raise MergelineError(f"{path}: task data must be a .jsonl or .csv file")
    if not path.is_file():
        raise MergelineError(f"{path}: task data file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MergelineError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    if not rows:
        raise MergelineError(f"{path}: empty task data file (no rows)")
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for lineno, row in jsonl_values(path, text):
        if not isinstance(row, dict):
            raise MergelineError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    try:
        for row in reader:
            if None in row:  # more cells than header columns
                raise MergelineError(f"{path}:{reader.line_num}: more values than the header has columns")
            if any(v.strip() for v in row.values() if v is not None):
                rows.append((reader.line_num, row))
    except csv.Error as exc:  # a field over csv.field_size_limit(), a stray quote or newline
        raise MergelineError(f"{path}:{reader.reader.line_num}: unreadable CSV ({exc})") from None
    return rows


class _Row(dict):
    """Prompt fields: a missing one names the file, line and field."""

    def __init__(self, row: dict[str, Any], where: str) -> None:
        super().__init__(row)
        self.where = where

    def __missing__(self, key: str) -> Any:
        raise MergelineError(f"{self.where}: prompt field '{key}' is not in the row (fields: {', '.join(self)})")


def _field(row: dict[str, Any], name: str, where: str, role: str) -> Any:
    if name not in row:
        raise MergelineError(f"{where}: missing field '{name}' (fields.{role}; the row has: {', '.join(row)})")
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MergelineError(f"{where}: field '{name}' (fields.{role}) is empty")
    return value


def _choices(value: Any, name: str, where: str) -> list[str]:
    if isinstance(value, str):  # CSV: a JSON list, or choices separated by '|'
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except (ValueError, RecursionError):  # malformed, an integer beyond 4,300 digits, nested too deeply
                raise MergelineError(f"{where}: field '{name}' (fields.choices) is not a JSON list") from None
        else:
            value = [c.strip() for c in stripped.split("|")]
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c.strip() for c in value):
        raise MergelineError(f"{where}: field '{name}' (fields.choices) must be a list of at least 2 non-empty strings")
    if len(set(value)) != len(value):
        raise MergelineError(f"{where}: field '{name}' (fields.choices) has duplicates")
    return value


def _label(value: Any, choices: list[str], name: str, where: str) -> int:
    if isinstance(value, str) and value in choices:
        return choices.index(value)
    if isinstance(value, str) and _INDEX.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return value
    shown = repr(value) if not isinstance(value, (str, int)) or len(str(value)) <= 40 else f"{str(value)[:40]}…"
    raise MergelineError(f"{where}: field '{name}' (fields.label) = {shown} is neither an index into nor one of "
                         f"the {len(choices)} choices")


def _spaced(prompt: str, answer: str) -> str:
    return answer if prompt[-1:].isspace() or answer[:1].isspace() else " " + answer


def _prompt(entry: TaskEntry, row: dict[str, Any], where: str) -> str:
    """The prompt template with each ``{column}`` replaced by the row's value: substitution only."""
    values = _Row({k: ("" if v is None else v) for k, v in row.items()}, where)
    values["text"] = _field(row, entry.fields.text, where, "text")
    try:
        parts = prompt_parts(entry.prompt)
    except ValueError as exc:  # checked when params load; a TaskEntry built otherwise gets here
        raise MergelineError(f"task '{entry.name}': prompt {exc}") from None
    return "".join(literal + ("" if name is None else str(values[name])) for literal, name in parts)


def to_record(entry: TaskEntry, row: dict[str, Any], where: str, record_id: str) -> dict[str, Any]:
    """One row as a task record (multiple choice or generation, after ``entry.type``)."""
    prompt = _prompt(entry, row, where)
    f = entry.fields
    if entry.type == "generation":
        target = str(_field(row, f.target, where, "target"))  # type: ignore[arg-type]
        return {"id": record_id, "prompt": prompt, "target": _spaced(prompt, target)}
    choices = _choices(_field(row, f.choices, where, "choices"), f.choices, where)  # type: ignore[arg-type]
    label = _label(_field(row, f.label, where, "label"), choices, f.label, where)  # type: ignore[arg-type]
    return {"id": record_id, "prompt": prompt, "choices": [_spaced(prompt, c) for c in choices], "label": label}


def data_files(entry: TaskEntry, root: Path) -> dict[str, Path]:
    """The task's data files: ``{"all": path}`` or one per split, resolved under ``root``."""
    assert entry.data is not None
    named = {"all": entry.data.path} if entry.data.path is not None else dict(entry.data.splits or {})
    return {key: (root / value if not Path(value).is_absolute() else Path(value)) for key, value in named.items()}


def _records(entry: TaskEntry, path: Path, prefix: str) -> list[dict[str, Any]]:
    return [to_record(entry, row, f"{path}:{lineno}", f"{prefix}/{lineno}") for lineno, row in read_rows(path)]


def split_records(records: list[dict[str, Any]], validation: float, test: float, seed: int,
                  where: str) -> dict[str, list[dict[str, Any]]]:
    """Seeded shuffle, then test and validation cut off the front (at least one example each)."""
    order = list(records)
    random.Random(f"mergeline:user:{seed}").shuffle(order)
    n = len(order)
    n_test, n_val = max(1, round(n * test)), max(1, round(n * validation))
    if n - n_test - n_val < 1:
        raise MergelineError(f"{where}: {n} example(s) cannot fill train, validation and test splits")
    return {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def user_task_splits(entry: TaskEntry, root: Path, warn: Warn | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every split of a data-file task as records; all validation happens here. Repeated examples are
    reported (``mergeline.data.overlap``): to ``warn``, and test examples that are training examples of
    given split files as an error."""
    files = data_files(entry, root)
    if "all" in files:
        s = entry.split
        records = _records(entry, files["all"], entry.name)
        splits = split_records(records, s.validation, s.test, s.seed, str(files["all"]))
        check_split_file(files["all"], records, splits, warn)
        return splits
    splits = {split: _records(entry, path, f"{entry.name}/{split}") for split, path in files.items()}
    check_given_splits(files, splits, warn)
    return splits
