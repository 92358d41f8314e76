"""Robustness cases: user data files and prompt templates are untrusted input.

``run`` with a task whose data file or prompt template is hostile: each is one line naming the file
and line (or ``tasks.N.prompt``, or the field), exit 2. A prompt substitutes column values only:
attribute or index access, conversions and format specifications are refused. Valid JSONL whose
strings hold U+2028 or U+0085 is read as written, and repeated rows are a warning. Cases that could run
away without the checks (a gigabyte of padding) run in a subprocess bounded in time and memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.robustness.kit import Case, cli, cli_bounded, intact, params, refused, snapshot, write_params

MC = {"name": "tickets", "type": "multiple_choice", "fields": {"text": "body", "choices": "options", "label": "answer"},
      "prompt": "Ticket: {text}\nCategory:"}


def _run_data(name: str, names: str, files: Callable[[Path], dict], bounded: bool = False, **task: object) -> Case:
    """``run`` with a task read from the files ``files(folder)`` writes: one line naming ``names``, and
    nothing written beside the inputs."""
    def check(folder: Path) -> str:
        path = write_params(folder, tasks=["news", {**MC, "data": files(folder), **task}])
        before = snapshot(folder)
        args = ["run", "--params", str(path)]
        code, _, err = cli_bounded(args, cwd=folder, timeout=60) if bounded else cli(args, cwd=folder)
        return f"{refused(code, err, names)}, {'nothing written' if intact(before, folder) == 'intact' else 'written'}"
    return Case("data", name, f"exit 2, one line, names {names}, nothing written", check)


def _jsonl(rows: list[dict] | None = None, raw: str = "", name: str = "t.jsonl") -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        lines = [json.dumps(r, ensure_ascii=False) for r in rows or []]
        (folder / name).write_text("".join(line + "\n" for line in lines) + raw, encoding="utf-8")
        return {"path": name}
    return write


def _csv(body: str) -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        (folder / "t.csv").write_text("body,options,answer\n" + body, encoding="utf-8")
        return {"path": "t.csv"}
    return write


def _rows(count: int, first: int = 0, text: str = "issue") -> list[dict]:
    return [{"body": f"{text} {i}", "options": ["a", "b"], "answer": i % 2} for i in range(first, first + count)]


def _splits(train: list[dict], test: list[dict]) -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        for name, rows in (("train.jsonl", train), ("val.jsonl", _rows(3, 100)), ("test.jsonl", test)):
            _jsonl(rows, name=name)(folder)
        return {"splits": {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}}
    return write


def _same_file(folder: Path) -> dict:
    _jsonl(_rows(10), name="all.jsonl")(folder)
    return {"splits": {"train": "all.jsonl", "validation": "all.jsonl", "test": "all.jsonl"}}


def _duplicates_warned(folder: Path) -> str:
    """Repeated rows in the training file: a warning line, then the run goes on (to the base check)."""
    path = write_params(folder, tasks=["news", {**MC, "data": _splits(_rows(6) + _rows(2), _rows(3, 200))(folder)}])
    code, _, err = cli(["run", "--params", str(path)], cwd=folder)
    warned = [line for line in err.splitlines() if line.startswith("warning:") and "train.jsonl" in line]
    rest = "\n".join(line for line in err.splitlines() if not line.startswith("warning:"))
    return f"{'warning names train.jsonl' if warned else 'no warning'}, then {refused(code, rest, 'base_model')}"


CASES: list[Case] = [
    _run_data("prompt {text:>1000000000}", "tasks.1.prompt", _jsonl(_rows(10)), bounded=True,
              prompt="{text:>1000000000}"),
    _run_data("prompt {text.__class__}", "tasks.1.prompt", _jsonl(_rows(10)), prompt="{text.__class__}"),
    _run_data("prompt {text[0]}", "tasks.1.prompt", _jsonl(_rows(10)), prompt="{text[0]}"),
    _run_data("prompt {text!r}", "tasks.1.prompt", _jsonl(_rows(10)), prompt="{text!r}"),
    _run_data("prompt {text:{text}} (nested specification)", "tasks.1.prompt", _jsonl(_rows(10)),
              prompt="{text:{text}}"),
    _run_data("prompt {0} (positional)", "prompt field", _jsonl(_rows(10)), prompt="Ticket {0}"),
    _run_data("CSV field of 200,000 characters", "t.csv:2", _csv(f"{'x' * 200_000},a|b,0\n" * 10)),
    _run_data("CSV label of 5,000 digits", "fields.label", _csv(f"x,a|b,{'9' * 5000}\n" * 10)),
    _run_data("JSONL nested 100,000 deep", "t.jsonl:1", _jsonl(raw='{"body": ' + "[" * 100_000 + "]" * 100_000 + "}\n")),
    _run_data("JSONL strings with U+2028 and U+0085 (valid)", "base_model", _jsonl(_rows(10, text="a\u2028b\u0085c"))),
    _run_data("JSONL strings with U+2028 only (valid)", "base_model", _jsonl(_rows(10, text="a\u2028b"))),
    _run_data("JSONL label an integer of 5,000 digits", "t.jsonl", _jsonl(raw="".join(
        '{"body": "x %d", "options": ["a", "b"], "answer": %s}\n' % (i, "9" * 5000) for i in range(10)))),
    _run_data("the same file as train, validation and test", "test", _same_file),
    _run_data("the same rows as train and test files", "test.jsonl", _splits(_rows(6), _rows(6))),
    _run_data("one test row is a training row", "test.jsonl:2", _splits(_rows(6), _rows(1, 100) + _rows(1, 3))),
    Case("data", "repeated rows in the training file", "warning names train.jsonl, then exit 2, one line, names base_model",
         _duplicates_warned),
]

REPRESENTATIVE = {
    "prompt {text:>1000000000}", "CSV field of 200,000 characters", "JSONL nested 100,000 deep",
    "JSONL strings with U+2028 and U+0085 (valid)", "one test row is a training row",
}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
