"""Repeated examples in user data (mergeline.data.overlap): duplicates within a file are a warning line,
test examples that are training examples of the given split files are refused in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeline.data.user import user_task_splits
from mergeline.errors import MergelineError
from mergeline.params import load_params
from mergeline.stages.preflight import preflight
from mergeline.task_params import TaskEntry

DEFAULT = Path(__file__).resolve().parents[2] / "params" / "default.yaml"
SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
MC = {"name": "tickets", "type": "multiple_choice", "fields": {"text": "body", "choices": "options", "label": "answer"},
      "prompt": "Ticket: {text}\nCategory:"}


def _rows(folder: Path, name: str, numbers: list[int], extra: str = "") -> None:
    """One example per number; ``extra`` goes into a column the prompt does not use."""
    kinds = ["hardware", "software", "billing"]
    folder.joinpath(name).write_text("".join(
        json.dumps({"body": f"issue {n}", "options": kinds, "answer": n % 3, "note": extra}) + "\n" for n in numbers))


def _given(root: Path, train: list[int], val: list[int], test: list[int]) -> tuple[TaskEntry, list[str]]:
    for split, numbers in (("train", train), ("validation", val), ("test", test)):
        _rows(root, SPLITS[split], numbers, extra=split)  # other columns differ: the examples are still the same
    warnings: list[str] = []
    entry = TaskEntry.model_validate({**MC, "data": {"splits": SPLITS}})
    user_task_splits(entry, root, warn=warnings.append)
    return entry, warnings


def test_disjoint_splits_say_nothing(tmp_path: Path) -> None:
    assert _given(tmp_path, list(range(10)), [10, 11], [12, 13])[1] == []


def test_test_examples_in_train_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MergelineError) as err:
        _given(tmp_path, list(range(10)), [10, 11], [12, 3, 4])
    message = str(err.value)
    assert f"{tmp_path / 'test.jsonl'}:2: test example is also a training example ({tmp_path / 'train.jsonl'}:4)" \
        in message and "2 of 3 test examples" in message and "\n" not in message, message


def test_the_same_file_for_every_split_is_refused(tmp_path: Path) -> None:
    _rows(tmp_path, "all.jsonl", list(range(10)))
    entry = TaskEntry.model_validate({**MC, "data": {"splits": {s: "all.jsonl" for s in SPLITS}}})
    with pytest.raises(MergelineError, match=r"10 of 10 test examples are in the training file \(the same file\)"):
        user_task_splits(entry, tmp_path)


def test_duplicates_and_validation_overlap_are_warnings(tmp_path: Path) -> None:
    _, warnings = _given(tmp_path, [0, 1, 2, 1, 1, 5], [0, 7, 7], [8, 9])
    assert warnings == [
        f"{tmp_path / 'train.jsonl'}: 2 example(s) repeat an earlier one (line 4 repeats line 2)",
        f"{tmp_path / 'val.jsonl'}: 1 example(s) repeat an earlier one (line 3 repeats line 2)",
        f"{tmp_path / 'val.jsonl'}:1: 1 of 3 validation examples are also train examples (first: "
        f"{tmp_path / 'train.jsonl'}:1)",
    ]


def test_duplicates_in_one_split_file_say_where_they_landed(tmp_path: Path) -> None:
    _rows(tmp_path, "all.jsonl", [n % 10 for n in range(40)])  # every example four times
    warnings: list[str] = []
    user_task_splits(TaskEntry.model_validate({**MC, "data": {"path": "all.jsonl"}}), tmp_path, warn=warnings.append)
    assert len(warnings) == 1 and "30 example(s) repeat an earlier one (line 11 repeats line 1)" in warnings[0]
    assert "test example(s) are also training examples after the split" in warnings[0], warnings[0]


def test_preflight_prints_warning_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _rows(tmp_path, "train.jsonl", [0, 1, 2, 3, 4, 0])
    _rows(tmp_path, "val.jsonl", [5, 6])
    _rows(tmp_path, "test.jsonl", [7, 8])
    task = {**MC, "data": {"splits": SPLITS}}
    params = load_params(str(DEFAULT), [f"tasks={json.dumps(['news', task])}"])
    preflight(params, tmp_path)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"warning: {tmp_path / 'train.jsonl'}: 1 example(s) repeat an earlier one (line 6 repeats line 1)"]
