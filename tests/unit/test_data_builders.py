"""Task builders: valid, deterministic, disjoint, balanced splits from the packaged sources."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mergeline.data import available_tasks, build_task, load_records, task_splits
from mergeline.data import news, sentiment
from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_file
from mergeline.io.outputs import MARKER

DOMAIN_TASKS = ["sentiment-air", "sentiment-other", "continue-air", "continue-other"]
SMALL = {"train": 10, "validation": 6, "test": 6}
CONTROL_SMALL = {"validation": 6, "test": 6}


def _sizes(task: str) -> dict[str, int]:
    return CONTROL_SMALL if task == "control" else SMALL


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every task built once with seed 0: {task: (folder, meta)}."""
    root = tmp_path_factory.mktemp("tasks")
    return {task: (root / task, build_task(task, root / task, _sizes(task), seed=0)) for task in available_tasks()}


def test_registry_lists_the_contract_names():
    assert available_tasks() == ["news", "sentiment", "code", "docstring", *DOMAIN_TASKS, "control"]


@pytest.mark.parametrize("task", ["news", "sentiment", "code", "docstring", *DOMAIN_TASKS, "control"])
def test_files_are_valid_and_match_meta(built, task):
    folder, meta = built[task]
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{s}.jsonl" for s in task_splits(task)] + ["meta.json", MARKER])
    ids = {}
    for split in task_splits(task):
        records = load_records(folder / f"{split}.jsonl")
        assert len(records) == _sizes(task)[split] == meta["counts"][split]
        assert meta["files"][f"{split}.jsonl"] == sha256_file(folder / f"{split}.jsonl")
        ids[split] = {r["id"] for r in records}
        for r in records:
            # fine-tuning concatenates prompt + choice: every choice must carry its own separator
            assert all(c[0] in " \n" or r["prompt"].endswith("\n") for c in r["choices"])
            assert len(r["prompt"]) <= 260
    splits = list(ids.values())
    assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1 :]), "an example is in two splits"
    assert json.loads((folder / "meta.json").read_text())["files"] == meta["files"]


def test_control_has_no_train_split(built):
    folder, meta = built["control"]
    assert not (folder / "train.jsonl").exists() and "train" not in meta["counts"]


@pytest.mark.parametrize("task", ["news", "sentiment", "code", "docstring", *DOMAIN_TASKS, "control"])
def test_same_seed_same_bytes_other_seed_other_bytes(built, task, tmp_path):
    _, meta = built[task]
    again = build_task(task, tmp_path / "again", _sizes(task), seed=0)
    other = build_task(task, tmp_path / "other", _sizes(task), seed=1)
    assert again["files"] == meta["files"]
    assert other["files"] != meta["files"]


def test_news_and_sentiment_are_balanced_with_fixed_choices(built):
    for task, module, k in (("news", news, 5), ("sentiment", sentiment, 3)):
        folder, _ = built[task]
        records = load_records(folder / "train.jsonl")
        counts = Counter(r["label"] for r in records)
        assert len(counts) == k and max(counts.values()) - min(counts.values()) <= 1
        assert all(r["choices"] == module.CHOICES for r in records)
    first = load_records(built["news"][0] / "test.jsonl")[0]
    assert first["prompt"].startswith("Article: ") and first["prompt"].endswith("\nTopic:")
    assert load_records(built["sentiment"][0] / "test.jsonl")[0]["prompt"].endswith("\nSentiment:")


def test_code_examples_are_file_disjoint_and_reindented(built):
    folder, _ = built["code"]
    files = {s: {r["id"].rsplit(":", 1)[0] for r in load_records(folder / f"{s}.jsonl")} for s in task_splits("code")}
    assert not (files["train"] & files["validation"]) and not (files["train"] & files["test"])
    for r in load_records(folder / "test.jsonl"):
        assert r["prompt"].endswith("\n") and len(r["choices"]) == 4
        indents = {len(c) - len(c.lstrip()) for c in r["choices"]}
        assert len(indents) == 1, "distractors must share the true line's indentation"


def test_docstring_and_control_shapes(built):
    for r in load_records(built["docstring"][0] / "train.jsonl"):
        assert r["prompt"].startswith("Description: ") and r["prompt"].endswith("\nFunction:")
        answer = r["choices"][r["label"]].strip()
        assert answer.isidentifier() and ">>>" not in r["prompt"]
    for r in load_records(built["control"][0] / "test.jsonl"):
        assert len(r["choices"]) == 4 and all(c.startswith(" ") and c.endswith(".") for c in r["choices"])


@pytest.mark.parametrize(
    ("task", "sizes", "seed", "message"),
    [
        ("nope", None, 0, "task 'nope': unknown task"),
        ("news", {"train": -1}, 0, "sizes.train: must be a non-negative integer"),
        ("news", {"train": 2.5}, 0, "sizes.train"),
        ("news", {"dev": 3}, 0, "sizes.dev: unknown split"),
        ("news", {"validation": 0}, 0, "sizes.validation"),
        ("control", {"train": 5}, 0, "has no train split"),
        ("docstring", {"train": 500}, 0, "only 163"),
        ("news", {"train": 5000}, 0, "sizes: class"),
        ("news", None, "0", "seed: must be an integer"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path, task, sizes, seed, message):
    out = tmp_path / "out"
    with pytest.raises(MergelineError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_task(task, out, sizes, seed=seed)
    assert not out.exists()


def test_failed_rebuild_keeps_previous_output(built, tmp_path):
    folder = tmp_path / "docstring"
    meta = build_task("docstring", folder, {"train": 4, "validation": 2, "test": 2})
    with pytest.raises(MergelineError):
        build_task("docstring", folder, {"train": 400})
    assert sha256_file(folder / "train.jsonl") == meta["files"]["train.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["docstring"], "a temporary folder was left behind"


def test_build_all_and_module_cli(tmp_path, capsys):
    from mergeline.data.__main__ import main

    assert main(["--out", str(tmp_path), "--tasks", "docstring,control", "--size", "docstring.train=3",
                 "--size", "docstring.validation=2", "--size", "docstring.test=2", "--size", "control.validation=2",
                 "--size", "control.test=2"]) == 0
    assert "task docstring: {'train': 3, 'validation': 2, 'test': 2}" in capsys.readouterr().out
    assert len(load_records(tmp_path / "control" / "test.jsonl")) == 2
    assert main(["--out", str(tmp_path / "x"), "--tasks", "news,nope"]) == 2
    assert "error: task 'nope': unknown task" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--size", "news=3"]) == 2
    assert not (tmp_path / "x").exists()


def test_domain_tasks_keep_their_domain_and_the_continuations_never_hold_a_sentiment_example(built):
    from mergeline.data.tweet_domains import AIRLINE

    for task in ("sentiment-air", "continue-air", "sentiment-other", "continue-other"):
        folder, _ = built[task]
        records = [r for split in task_splits(task) for r in load_records(folder / f"{split}.jsonl")]
        airline = [bool(AIRLINE.search(r["prompt"] + r["choices"][r["label"]])) for r in records]
        assert all(airline) if task.endswith("-air") else not any(airline), task
    sentiment_ids = {r["id"] for t in ("sentiment", "sentiment-air", "sentiment-other")
                     for split in task_splits(t) for r in load_records(built[t][0] / f"{split}.jsonl")}
    continued = {r["id"] for t in ("continue-air", "continue-other")
                 for split in task_splits(t) for r in load_records(built[t][0] / f"{split}.jsonl")}
    assert not sentiment_ids & continued
