"""Repeated examples in user task data: duplicates within a file, and examples shared between splits.

An example is what fine-tuning and evaluation see, the prompt and the answer (choices and label, or
target); the row's other columns and its line do not count. What is reported:

- a file whose examples repeat: a warning naming the file, how many repeat, and the first pair of lines;
- given split files (``data.splits``): a test example that is also a training example is an error
  (:class:`MergelineError`: the test score would measure memorisation), naming both files and lines;
  a validation example that is also a training or test example is a warning (selection would favour
  memorisation, or the test set would have been looked at);
- one file cut by the seeded splitter (``data.path``): repeated rows may land on both sides of the cut;
  the duplicates warning says how many test examples are then also training examples.

Warnings go to ``warn`` (one line each; preflight prints them as ``warning: ...``), or nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergeline.errors import MergelineError

Warn = Callable[[str], None]
Records = list[dict[str, Any]]


def example_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two records the same example."""
    if "target" in record:
        return (record["prompt"], record["target"])
    return (record["prompt"], tuple(record["choices"]), record["label"])


def _line(record: dict[str, Any]) -> str:
    return str(record["id"]).rsplit("/", 1)[-1]  # ids are "<task>[/<split>]/<line>"


def _first_lines(records: Records) -> dict[tuple[Any, ...], str]:
    first: dict[tuple[Any, ...], str] = {}
    for record in records:
        first.setdefault(example_key(record), _line(record))
    return first


def _shared(records: Records, other: Records) -> list[tuple[str, str]]:
    """``(line in records, first line in other)`` of each example of ``records`` that ``other`` holds."""
    lines = _first_lines(other)
    return [(_line(r), lines[k]) for r in records if (k := example_key(r)) in lines]


def _duplicates(path: Path, records: Records, warn: Warn | None, after_split: str = "") -> None:
    seen: dict[tuple[Any, ...], str] = {}
    repeats: list[tuple[str, str]] = []
    for record in records:
        key = example_key(record)
        if key in seen:
            repeats.append((_line(record), seen[key]))
        else:
            seen[key] = _line(record)
    if repeats and warn is not None:
        later, earlier = repeats[0]
        warn(f"{path}: {len(repeats)} example(s) repeat an earlier one (line {later} repeats line {earlier})"
             f"{after_split}")


def check_split_file(path: Path, records: Records, splits: dict[str, Records], warn: Warn | None) -> None:
    """``data.path``: duplicates in the file, and how many of them the seeded cut put in test and train."""
    leaked = len(_shared(splits["test"], splits["train"]))
    note = f"; {leaked} test example(s) are also training examples after the split" if leaked else ""
    _duplicates(path, records, warn, note)


def check_given_splits(files: dict[str, Path], splits: dict[str, Records], warn: Warn | None) -> None:
    """``data.splits``: duplicates in each file, test examples in train (error), validation in the others."""
    for split, path in files.items():
        _duplicates(path, splits[split], warn)
    leaked = _shared(splits["test"], splits["train"])
    if leaked:
        test_line, train_line = leaked[0]
        same = " (the same file)" if files["test"].resolve() == files["train"].resolve() else ""
        raise MergelineError(
            f"{files['test']}:{test_line}: test example is also a training example ({files['train']}:{train_line}); "
            f"{len(leaked)} of {len(splits['test'])} test examples are in the training file{same}: the test "
            "score would measure memorisation; remove them from one of the files")
    for other in ("train", "test"):
        shared = _shared(splits["validation"], splits[other])
        if shared and warn is not None:
            line, other_line = shared[0]
            warn(f"{files['validation']}:{line}: {len(shared)} of {len(splits['validation'])} validation examples "
                 f"are also {other} examples (first: {files[other]}:{other_line})")
