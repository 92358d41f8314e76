"""Only proof that mergeline wrote a folder lets an output replace it: its marker, of the same kind,
listing every file in it. File names mergeline uses prove nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir, check_output_dir
from mergeline.io.outputs import MARKER, WORK_MARKER, replace_problem

# What older versions took as "a previous mergeline output": the names of their outputs' files.
LOOKALIKES = {
    "dataset": ["meta.json", "train.jsonl", "test.jsonl"],
    "checkpoint": ["finetune.json", "config.json", "model.safetensors"],
    "task vector": ["task_vector.json", "task_vector.safetensors"],
    "imported base": [".mergeline_import.json", "config.json"],
    "merge": ["merge_report.json", "merge.yaml"],
}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _output(target: Path, kind: str = "task-vector", files: tuple[str, ...] = ("task_vector.json",)) -> Path:
    with atomic_dir(target, kind=kind) as tmp:  # type: ignore[arg-type]
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(f"{name} of {target.name}")
    return target


@pytest.mark.parametrize("names", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_a_users_folder_named_like_an_output_is_never_replaced(tmp_path: Path, names: list[str]) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    for name in names:
        (user / name).write_text("{}\n")
    (user / "thesis.tex").write_text("years of work")
    before = _tree(user)
    for kind in ("dataset", "checkpoint", "task-vector", "base", "merge"):
        with pytest.raises(MergelineError, match=rf"mine: not a mergeline output \(no {MARKER}\).*delete it yourself"):
            with atomic_dir(user, kind=kind) as tmp:  # type: ignore[arg-type]
                (tmp / "new.txt").write_text("new")
    assert _tree(user) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_previous_output_is_replaced_whole(tmp_path: Path) -> None:
    out = _output(tmp_path / "vec", files=("task_vector.json", "shards/one.safetensors", "shards/two.safetensors"))
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"files": ["shards/", "shards/one.safetensors", "shards/two.safetensors", "task_vector.json"],
                      "kind": "task-vector", "written_by": "mergeline"}
    _output(out, files=("task_vector.json",))
    assert sorted(_tree(out)) == [MARKER, "task_vector.json"]  # the old shards are gone with the old output
    assert (out / "task_vector.json").read_text() == "task_vector.json of vec"


@pytest.mark.parametrize("added", ["notes.txt", "shards/extra.bin", "empty/"])
def test_a_previous_output_holding_a_file_mergeline_did_not_write_is_kept(tmp_path: Path, added: str) -> None:
    out = _output(tmp_path / "vec", files=("task_vector.json", "shards/one.safetensors"))
    if added.endswith("/"):
        (out / added).mkdir()
    else:
        (out / added).write_text("the user's")
    before = _tree(out)
    with pytest.raises(MergelineError, match=rf"vec: holds {added}, which mergeline did not write"):
        _output(out)
    assert _tree(out) == before and (out / added.rstrip("/")).exists()


def test_a_marker_without_a_file_list_is_left_to_the_user(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "task_vector.json").write_text("{}")
    (old / MARKER).write_text('{"written_by": "mergeline"}\n')  # the marker of earlier versions
    with pytest.raises(MergelineError, match=r"older mergeline \(no file list\); refusing to replace .*delete it yourself"):
        _output(old)
    assert (old / "task_vector.json").read_text() == "{}"


def test_an_output_of_another_kind_and_a_place_inside_an_output_are_refused(tmp_path: Path) -> None:
    vector = _output(tmp_path / "vec")
    before = _tree(vector)
    with pytest.raises(MergelineError, match="vec: holds a task vector that mergeline wrote, not a merged model"):
        _output(vector, kind="merge")
    for inside in (vector / "merged", vector / "a" / "b"):
        with pytest.raises(MergelineError, match=r"is inside .*vec, an output mergeline wrote"):
            _output(inside, kind="merge")
    assert _tree(vector) == before and sorted(p.name for p in vector.iterdir()) == sorted(before)


def test_check_output_dir_refuses_any_place_in_a_work_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    vector = _output(work / "vectors" / "a")
    (work / WORK_MARKER).write_text("{}")
    for target in (work, work / "vectors", vector, work / "new", work / "vectors" / "b"):
        with pytest.raises(MergelineError, match="a mergeline work folder"):
            check_output_dir(target, kind="merge", overwrite=True)
    # The pipeline's own stages write there.
    assert check_output_dir(work / "merged" / "v1", kind="merge", work_folder_ok=True) == work / "merged" / "v1"
    assert replace_problem(tmp_path / "elsewhere", "merge", overwrite=True) is None
