"""User tasks in params: the schema of a tasks: entry, data files → records, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergeline.data.records import load_records
from mergeline.data.tasks import resolve_task, source_hashes, write_task
from mergeline.data.user import user_task_splits
from mergeline.errors import MergelineError
from mergeline.params import load_params
from mergeline.stages.preflight import preflight
from mergeline.task_params import TaskEntry

DEFAULT = Path(__file__).resolve().parents[2] / "params" / "default.yaml"
MC = {"name": "tickets", "data": {"path": "tickets.jsonl"}, "type": "multiple_choice",
      "fields": {"text": "body", "choices": "options", "label": "answer"}, "prompt": "Ticket: {text}\nCategory:"}
GEN = {"name": "titles", "data": {"path": "titles.csv"}, "type": "generation",
       "fields": {"text": "abstract", "target": "title"}, "prompt": "Abstract: {text} ({year})\nTitle:"}


def write_mc(root: Path, rows: int = 10, name: str = "tickets.jsonl") -> Path:
    path = root / name
    kinds = ["hardware", "software", "billing"]
    lines = [json.dumps({"body": f"issue {i}", "options": kinds, "answer": kinds[i % 3] if i % 2 else i % 3})
             for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_gen(root: Path, name: str = "titles.csv", first: int = 0) -> Path:
    path = root / name
    rows = "".join(f"text {i},title {i},{2000 + i}\n" for i in range(first, first + 10))
    path.write_text("abstract,title,year\n" + rows, encoding="utf-8")
    return path


def params_with(tmp_path: Path, *tasks: object):  # type: ignore[no-untyped-def]
    return load_params(str(DEFAULT), [f"tasks={json.dumps(list(tasks))}"])


def test_strings_and_mappings_are_entries_of_one_mechanism(tmp_path: Path) -> None:
    params = params_with(tmp_path, "news", MC)
    assert params.task_names == ["news", "tickets"]
    assert [e.kind for e in params.task_entries] == ["builtin", "file"]
    # the default experiment's params are unchanged (strings dump as strings: same params hash)
    default = load_params(str(DEFAULT))
    assert default.model_dump(mode="json")["tasks"] == ["news", "sentiment", "code"]
    builtin = resolve_task("news", tmp_path, {"train": 4, "validation": 2, "test": 2})
    assert (builtin.output, builtin.metric, builtin.source_files) == ("multiple_choice", "acc", ())


@pytest.mark.parametrize(("entry", "fragment"), [
    ({**MC, "colour": 1}, "tasks.0.colour: Extra inputs"),
    ({**MC, "type": None}, "type is required"),
    ({**MC, "fields": {"text": "body"}}, "needs fields.choices and fields.label"),
    ({**GEN, "fields": {"text": "abstract"}}, "generation needs fields.target"),
    ({**GEN, "metric": "perplexity"}, "metric 'perplexity'"),
    ({**MC, "data": {"splits": {"train": "a.jsonl"}}}, "missing: test, validation"),
    ({**MC, "data": {"path": "a.jsonl", "splits": {"train": "a"}}}, "exactly one of data.path or data.splits"),
    ({**MC, "name": "no spaces"}, "task name 'no spaces'"),
    ({**MC, "split": {"validation": 0.5, "test": 0.5}}, "must leave examples to train on"),
    ({"name": "x", "data": {"path": "a.jsonl"}, "type": "generation", "fields": {"target": "t"},
      "lm_eval": {"task": "y"}}, "data or lm_eval, not both"),
    # prompts substitute column values, nothing more: str.format's attribute and index access, padding
    # ({text:>1000000000} grew to gigabytes) and conversions are refused when the params load
    ({**MC, "prompt": "{text.__class__}"}, "tasks.0.prompt: {text.__class__}: attribute or index access"),
    ({**MC, "prompt": "{text[0]}"}, "tasks.0.prompt: {text[0]}: attribute or index access"),
    ({**MC, "prompt": "{text:>1000000000}"}, "tasks.0.prompt: {text:>1000000000}: conversions and format"),
    ({**MC, "prompt": "{text:.3}"}, "tasks.0.prompt: {text:.3}: conversions and format"),
    ({**MC, "prompt": "{text!r}"}, "tasks.0.prompt: {text!r}: conversions and format"),
    ({**MC, "prompt": "Q: {} A:"}, "tasks.0.prompt: {}: name the column"),
    ({**MC, "prompt": "Q: {text"}, "tasks.0.prompt: not a valid template"),
])
def test_bad_entries_fail_when_params_load(tmp_path: Path, entry: dict, fragment: str) -> None:
    with pytest.raises(MergelineError, match=None) as err:
        params_with(tmp_path, entry)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_multiple_choice_jsonl_label_by_index_or_text_and_a_seeded_split(tmp_path: Path) -> None:
    write_mc(tmp_path)
    entry = TaskEntry.model_validate(MC)
    splits = user_task_splits(entry, tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"test": 2, "validation": 1, "train": 7}
    every = [r for rows in splits.values() for r in rows]
    assert len({r["id"] for r in every}) == 10  # disjoint, nothing lost
    first = next(r for r in every if r["id"] == "tickets/2")  # row 2 (line 2): label given as the text
    assert first == {"id": "tickets/2", "prompt": "Ticket: issue 1\nCategory:",
                     "choices": [" hardware", " software", " billing"], "label": 1}
    assert user_task_splits(entry, tmp_path) == splits  # same seed, same split
    other = TaskEntry.model_validate({**MC, "split": {"seed": 1}})
    assert user_task_splits(other, tmp_path)["test"] != splits["test"]


def test_generation_csv_with_given_splits_written_and_hashed(tmp_path: Path) -> None:
    files = {"train": write_gen(tmp_path).name, "validation": write_gen(tmp_path, "titles-val.csv", 100).name,
             "test": write_gen(tmp_path, "titles-test.csv", 200).name}
    entry = TaskEntry.model_validate({**GEN, "data": {"splits": files}})
    task = resolve_task(entry, tmp_path)
    meta = write_task(task, tmp_path / "out")
    records = load_records(tmp_path / "out" / "train.jsonl")
    assert records[0] == {"id": "titles/train/2", "prompt": "Abstract: text 0 (2000)\nTitle:", "target": " title 0"}
    assert meta["output"] == "generation" and meta["metric"] == "exact_match"
    source = str(tmp_path / "titles.csv")
    assert meta["source_files"] == source_hashes([entry], tmp_path) and len(meta["source_files"]) == 3
    (tmp_path / "titles.csv").write_text("abstract,title,year\nchanged,x,1\n" * 3, encoding="utf-8")
    assert source_hashes([entry], tmp_path)[source] != meta["source_files"][source]


@pytest.mark.parametrize(("content", "entry", "fragment"), [
    (None, MC, "tickets.jsonl: task data file not found"),
    (b"", MC, "tickets.jsonl: empty task data file"),
    (b'{"body": "caf\xe9"}\n', MC, "tickets.jsonl: not UTF-8 text"),
    (b'{"body": "x", "options": ["a", "b"]\n', MC, "tickets.jsonl:1: malformed JSON"),
    (b'["a"]\n', MC, "tickets.jsonl:1: expected a JSON object"),
    (b'{"text": "x", "options": ["a", "b"], "answer": 0}\n', MC, "tickets.jsonl:1: missing field 'body'"),
    (b'{"body": "x", "options": ["a", "b"], "answer": 2}\n', MC, "tickets.jsonl:1: field 'answer' (fields.label) = 2"),
    (b'{"body": "x", "options": ["a", "b"], "answer": "c"}\n', MC, "'answer' (fields.label) = 'c' is neither"),
    (b'{"body": "x", "options": "a", "answer": 0}\n', MC, "(fields.choices) must be a list of at least 2"),
    (b'{"body": "", "options": ["a", "b"], "answer": 0}\n', MC, "field 'body' (fields.text) is empty"),
    (b'{"body": "x", "options": ["a", "b"], "answer": 0}\n', {**MC, "prompt": "{colour}: {text}"},
     "prompt field 'colour' is not in the row"),
    (b'{"body": "x", "options": ["a", "b"], "answer": 0}\n' * 2, MC, "2 example(s) cannot fill train, validation"),
    (b'{"body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", MC, "tickets.jsonl:1: JSON nested too deeply"),
    (b'{"body": "x", "options": ["a", "b"], "answer": 1' + b"0" * 5000 + b"}\n", MC, "tickets.jsonl:1: unreadable JSON"),
])
def test_bad_data_fails_in_preflight_naming_file_and_field(tmp_path: Path, content: bytes | None, entry: dict,
                                                          fragment: str) -> None:
    if content is not None:
        (tmp_path / "tickets.jsonl").write_bytes(content)
    params = params_with(tmp_path, entry)
    with pytest.raises(MergelineError) as err:
        preflight(params, tmp_path)
    assert fragment in str(err.value), str(err.value)
    assert not (tmp_path / "data").exists()


def test_hostile_csv_fields_and_labels_give_one_line(tmp_path: Path) -> None:
    entry = TaskEntry.model_validate({**MC, "data": {"path": "t.csv"}})
    header = "body,options,answer\n"
    for row, fragment in (
        (f"{'x' * 200_000},a|b,0\n", "t.csv:2: unreadable CSV (field larger than field limit"),
        (f"x,a|b,{'9' * 5000}\n", "t.csv:2: field 'answer' (fields.label) = 9999"),  # int() refuses > 4300 digits
        ('x,"[' + "[" * 100_000 + '",0\n', "t.csv:2: field 'options' (fields.choices) is not a JSON list"),
    ):
        (tmp_path / "t.csv").write_text(header + row * 10)
        with pytest.raises(MergelineError) as err:
            user_task_splits(entry, tmp_path)
        assert fragment in str(err.value) and len(str(err.value)) < 400, str(err.value)


def test_jsonl_lines_end_at_newline_only(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are line breaks to str.splitlines, and legal, unescaped, in a JSON string."""
    breaks = "\u2028\u2029\u0085\x1c"
    rows = [{"body": f"issue{breaks}{i}", "options": ["a", "b"], "answer": i % 2} for i in range(10)]
    (tmp_path / "tickets.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    splits = user_task_splits(TaskEntry.model_validate(MC), tmp_path)
    prompts = sorted(r["prompt"] for rows in splits.values() for r in rows)
    assert prompts == sorted(f"Ticket: issue{breaks}{i}\nCategory:" for i in range(10))
    write_task(resolve_task(TaskEntry.model_validate(MC), tmp_path), tmp_path / "out")
    assert sum(len(load_records(tmp_path / "out" / f"{s}.jsonl")) for s in ("train", "validation", "test")) == 10


def test_prompt_fields_are_substituted_as_text(tmp_path: Path) -> None:
    (tmp_path / "tickets.jsonl").write_text("".join(
        json.dumps({"body": "{text}", "meta": {"k": [1]}, "n": 7, "options": ["a", "b"], "answer": 0}) + "\n"
        for _ in range(1)) * 5)
    entry = TaskEntry.model_validate({**MC, "prompt": "{{literal}} {text} {meta} {n}:"})
    record = user_task_splits(entry, tmp_path)["test"][0]
    assert record["prompt"] == "{literal} {text} {'k': [1]} 7:"  # a value is never a template itself


def test_wrong_extension_and_csv_choices(tmp_path: Path) -> None:
    (tmp_path / "rows.txt").write_text("x\n")
    with pytest.raises(MergelineError, match="must be a .jsonl or .csv file"):
        user_task_splits(TaskEntry.model_validate({**MC, "data": {"path": "rows.txt"}}), tmp_path)
    (tmp_path / "t.csv").write_text("body,options,answer\n" + "".join(f"b{i},a|b|c,c\n" for i in range(5)))
    splits = user_task_splits(TaskEntry.model_validate({**MC, "data": {"path": "t.csv"}}), tmp_path)
    assert all(r["choices"] == [" a", " b", " c"] and r["label"] == 2 for rows in splits.values() for r in rows)


def _lm_eval_tasks(root: Path) -> Path:
    folder = root / "lm_tasks"
    folder.mkdir()
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i} + 1", "options": [str(i + 1), str(i + 2)], "gold": 0}) + "\n"
                            for i in range(10)))
    base = {"output_type": "multiple_choice", "test_split": "test", "doc_to_text": "Q: {{q}}\nA:",
            "doc_to_choice": "options", "doc_to_target": "gold"}
    (folder / "qa.yaml").write_text(yaml.safe_dump({"task": "my_qa", "dataset_path": "json",
                                                    "dataset_kwargs": {"data_files": {"test": str(data)}}, **base}))
    # a hub dataset: with the hub offline its data cannot load
    (folder / "hub.yaml").write_text(yaml.safe_dump({"task": "hub_qa", "dataset_path": "allenai/ai2_arc",
                                                     "dataset_name": "ARC-Easy", **base}))
    return folder


def test_lm_eval_task_from_include_path_and_its_errors(tmp_path: Path) -> None:
    _lm_eval_tasks(tmp_path)
    entry = TaskEntry.model_validate({"name": "qa", "lm_eval": {"task": "my_qa", "include_path": "lm_tasks"}})
    task = resolve_task(entry, tmp_path)
    splits = task.build()
    assert task.output == "multiple_choice" and sum(len(v) for v in splits.values()) == 10
    record = next(r for rows in splits.values() for r in rows if r["prompt"] == "Q: 3 + 1\nA:")
    assert record["choices"] == [" 4", " 5"] and record["label"] == 0  # lm-eval's target_delimiter " "
    assert {p.name for p in task.source_files} == {"qa.yaml", "hub.yaml", "qa.jsonl"}  # configs and their data
    for name, fragment in (("nope", "lm-eval task 'nope' does not exist under"),
                           ("hub_qa", "lm-eval task 'hub_qa': its data is not available offline")):
        params = params_with(tmp_path, {"name": "qa", "lm_eval": {"task": name, "include_path": "lm_tasks"}})
        with pytest.raises(MergelineError, match=fragment):
            preflight(params, tmp_path)


def test_stage_command_wants_user_files_as_dvc_deps(tmp_path: Path) -> None:
    from mergeline.commands.stage import check_dvc_deps

    write_mc(tmp_path)
    params = params_with(tmp_path, MC)
    dvc = {"stages": {"prepare-data": {"cmd": "mergeline stage prepare-data", "deps": ["mergeline/data"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    with pytest.raises(MergelineError, match="does not depend on .*tickets.jsonl .*task 'tickets'"):
        check_dvc_deps(params, tmp_path)
    dvc["stages"]["prepare-data"]["deps"].append(".")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    check_dvc_deps(params, tmp_path)  # a folder above the file covers it
    given = params_with(tmp_path, {"name": "news", "checkpoint": "models/news-ft"})
    with pytest.raises(MergelineError, match="stage fine-tune does not depend on .*models/news-ft .*model of task"):
        check_dvc_deps(given, tmp_path)


def test_generation_files_get_the_generate_until_template(tmp_path: Path) -> None:
    from mergeline.evaluate import write_task_yamls

    write_gen(tmp_path)
    write_mc(tmp_path)
    for name, entry in (("titles", GEN), ("tickets", MC)):
        write_task(resolve_task(TaskEntry.model_validate(entry), tmp_path), tmp_path / name)
    names = write_task_yamls({"titles": tmp_path / "titles/test.jsonl", "bleu": tmp_path / "titles/test.jsonl",
                              "tickets": tmp_path / "tickets/test.jsonl"}, tmp_path, tmp_path / "cache",
                             {"bleu": "bleu"})
    configs = {k: yaml.safe_load((tmp_path / f"{v}.yaml").read_text()) for k, v in names.items()}
    assert configs["titles"]["output_type"] == "generate_until"
    assert configs["titles"]["doc_to_target"] == "target" and configs["titles"]["metric_list"][0]["metric"] == "exact_match"
    assert configs["bleu"]["metric_list"] == [{"metric": "bleu"}]
    assert configs["tickets"]["output_type"] == "multiple_choice"


def test_the_readme_example_params_pass_preflight() -> None:
    repo = DEFAULT.parents[1]
    params = load_params(str(repo / "params" / "own-data-example.yaml"))
    assert params.task_names == ["news", "tickets", "titles"]
    preflight(params, repo)  # every row of the example files converts
    splits = user_task_splits(params.task_entry("titles"), repo)
    assert all(r["target"].startswith(" ") for rows in splits.values() for r in rows)
