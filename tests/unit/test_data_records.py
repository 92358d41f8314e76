"""load_records: every malformed-file case gives one MergelineError naming the file and line."""

from __future__ import annotations

import json

import pytest

from mergeline.data import load_records
from mergeline.errors import MergelineError

GOOD = {"id": "a", "prompt": "Q:", "choices": [" x", " y"], "label": 1}


def _line(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def test_valid_file_round_trips(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(_line() + "\n" + _line(id="b", label=0, extra="kept") + "\n\n", encoding="utf-8")
    records = load_records(path)
    assert [r["id"] for r in records] == ["a", "b"]
    assert records[1]["label"] == 0 and records[0]["choices"] == [" x", " y"]


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        ([], "", "empty task data file"),
        (["   ", ""], "", "empty task data file"),
        ([_line(), "{not json"], ":2:", "malformed JSON"),
        ([_line(), "[1, 2]"], ":2:", "expected a JSON object"),
        ([_line(label=...)], ":1:", "missing key 'label'"),
        ([_line(id=...)], ":1:", "missing key 'id'"),
        ([_line(choices=...)], ":1:", "missing key 'choices'"),
        ([_line(prompt=...)], ":1:", "missing key 'prompt'"),
        ([_line(label=2)], ":1:", "'label' 2 out of range for 2 choices"),
        ([_line(label=-1)], ":1:", "out of range"),
        ([_line(label=True)], ":1:", "'label' must be an integer"),
        ([_line(label="1")], ":1:", "'label' must be an integer"),
        ([_line(choices=[" x"])], ":1:", "at least 2"),
        ([_line(choices=" x y")], ":1:", "at least 2"),
        ([_line(choices=[" x", 3])], ":1:", "non-empty strings"),
        ([_line(choices=[" x", " x"])], ":1:", "duplicates"),
        ([_line(prompt="")], ":1:", "'prompt' must be a non-empty string"),
        ([_line(id=7)], ":1:", "'id' must be a non-empty string"),
        ([_line(), _line(label=0)], ":2:", "duplicate id 'a' (first on line 1)"),
    ],
)
def test_malformed_file_names_file_and_line(tmp_path, lines, where, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(MergelineError) as info:
        load_records(path)
    text = str(info.value)
    assert text.startswith(f"{path}{where}") and message in text
    assert "\n" not in text


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(MergelineError, match="not found"):
        load_records(tmp_path / "absent.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_line(prompt="caf\u00e9").encode("utf-8").replace(b"\\u00e9", b"\xe9"))
    with pytest.raises(MergelineError, match="not UTF-8"):
        load_records(path)
