"""Task folders (lm-eval ``include_path``) are untrusted input: their Python runs only with ``trust_code``,
their templates render in a sandbox, and the data file lm-eval reads is the one that is hashed.

Each class of case: a task folder whose code would leave a marker file if it ran; the test asserts the
marker is absent (refused, or not needed) or present (consented to).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from mergeline.data.tasks import resolve_task, source_files, source_hashes, write_task
from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_file
from mergeline.params import load_params
from mergeline.task_params import TaskEntry

REPO = Path(__file__).resolve().parents[2]
BASE = {"task": "my_qa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "qa.jsonl"}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "Q: {{q}}\nA:",
        "doc_to_choice": "options", "doc_to_target": "gold"}


def _rows(path: Path, tag: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"q": f"{tag} {i}", "options": ["yes", "no"], "gold": 0}) + "\n"
                            for i in range(8)), encoding="utf-8")
    return path


def _folder(root: Path, extra: str = "", relative: bool = False, **config: object) -> Path:
    """``root/lm_tasks/qa.yaml`` (BASE, then ``config``, then raw YAML lines ``extra`` for tags) beside its
    data (named by absolute path unless ``relative``), and ``utils.py`` whose import and function each
    leave a marker file in ``root``."""
    folder = root / "lm_tasks"
    data = _rows(folder / "qa.jsonl", "beside")
    kwargs = {"dataset_kwargs": {"data_files": {"test": "qa.jsonl" if relative else str(data)}}}
    (folder / "qa.yaml").write_text(yaml.safe_dump({**BASE, **kwargs, **config}, sort_keys=False) + extra,
                                    encoding="utf-8")
    (folder / "utils.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(root / 'IMPORTED')!r}).touch()\n"
        "def process_docs(dataset):\n"
        f"    Path({str(root / 'CALLED')!r}).touch()\n"
        "    return dataset.map(lambda d: {**d, 'q': d['q'].upper()})\n", encoding="utf-8")
    return folder / "qa.yaml"


def _entry(**lm_eval: object) -> TaskEntry:
    return TaskEntry.model_validate({"name": "qa", "lm_eval": {"task": "my_qa", "include_path": "lm_tasks", **lm_eval}})


def _prompts(root: Path, entry: TaskEntry) -> set[str]:
    return {r["prompt"] for rows in resolve_task(entry, root).build().values() for r in rows}


def test_function_tag_is_refused_without_trust_code_and_never_imported(tmp_path: Path) -> None:
    task_yaml = _folder(tmp_path, "process_docs: !function utils.process_docs\n")
    with pytest.raises(MergelineError) as refused:
        resolve_task(_entry(), tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{task_yaml}: process_docs: !function utils.process_docs would run Python")
    assert "trust_code: true" in message and "\n" not in message
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "CALLED").exists()

    prompts = _prompts(tmp_path, _entry(trust_code=True))  # consented: lm-eval imports and calls it
    assert "Q: BESIDE 3\nA:" in prompts
    assert (tmp_path / "IMPORTED").exists() and (tmp_path / "CALLED").exists()


def test_function_tag_in_an_included_yaml_outside_the_folder_is_found(tmp_path: Path) -> None:
    _folder(tmp_path, include="../shared/base.yaml")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.yaml").write_text("metric_list:\n  - metric: acc\n    aggregation: !function utils.process_docs\n",
                                      encoding="utf-8")
    (shared / "utils.py").write_text((tmp_path / "lm_tasks" / "utils.py").read_text(), encoding="utf-8")
    with pytest.raises(MergelineError, match=rf"^{shared / 'base.yaml'}: metric_list\[0\]\.aggregation: !function"):
        resolve_task(_entry(), tmp_path)
    assert not (tmp_path / "IMPORTED").exists()
    assert (shared / "base.yaml").resolve() in {p.resolve() for p in source_files(_entry(), tmp_path)}


@pytest.mark.parametrize(("extra", "key", "shown"), [
    ("process_docs: !!python/object/apply:os.system ['touch RAN']\n", "process_docs",
     "!!python/object/apply:os.system ['touch RAN']"),
    ("metric_list:\n  - metric: !!python/name:os.system\n", "metric_list[0].metric", "!!python/name:os.system"),
])
def test_python_tag_is_refused_naming_file_and_key_not_reported_as_a_missing_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str, key: str, shown: str) -> None:
    # lm-eval's index skips a YAML its loader cannot read, so the task looks absent: the file that names it says why
    monkeypatch.chdir(tmp_path)
    task_yaml = _folder(tmp_path, extra)
    with pytest.raises(MergelineError) as refused:
        resolve_task(_entry(), tmp_path)
    assert str(refused.value) == (f"{task_yaml}: {key}: {shown} would run Python from the task folder; set "
                                  "trust_code: true beside include_path (task 'qa') to allow it")
    with pytest.raises(MergelineError) as unloadable:  # consent does not make lm-eval's loader construct it
        resolve_task(_entry(trust_code=True), tmp_path)
    assert str(unloadable.value).startswith(f"{task_yaml}: {key}: {shown} is a PyYAML Python tag")
    assert "\n" not in str(unloadable.value)
    assert not (tmp_path / "RAN").exists() and not (tmp_path / "IMPORTED").exists()


def test_preflight_of_the_cli_exits_2_naming_file_and_key_before_any_code_runs(tmp_path: Path) -> None:
    task_yaml = _folder(tmp_path, "doc_to_text: !function utils.process_docs\n")
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    params["tasks"] = [{"name": "qa", "lm_eval": {"task": "my_qa", "include_path": "lm_tasks"}}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mergeline.cli", "run", "--params", "params.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: {task_yaml.resolve()}: doc_to_text: !function "
                                                "utils.process_docs would run Python from the task folder; set "
                                                "trust_code: true beside include_path (task 'qa') to allow it"]
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "data").exists()


def test_a_metric_lm_eval_does_not_know_is_not_loaded_as_a_script(tmp_path: Path) -> None:
    # lm-eval hands an unknown metric name to HF evaluate.load, which imports a local script by path
    script = tmp_path / "metric.py"
    script.write_text(f"from pathlib import Path\nPath({str(tmp_path / 'IMPORTED')!r}).touch()\n", encoding="utf-8")
    _folder(tmp_path, metric_list=[{"metric": str(script)}])
    assert "Q: beside 3\nA:" in _prompts(tmp_path, _entry())
    assert not (tmp_path / "IMPORTED").exists()


def _assert_refused_by_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, template: str,
                               reason: str) -> None:
    """The task's template under ``key`` is refused in one line naming the file, the key and ``reason``."""
    monkeypatch.chdir(tmp_path)
    task_yaml = _folder(tmp_path, **{key: template})
    with pytest.raises(MergelineError) as refused:
        resolve_task(_entry(), tmp_path)
    assert str(refused.value).startswith(f"{task_yaml.resolve()}: {key}: template refused by the sandbox ({reason}")
    assert "trust_code: true" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(("key", "template", "reason"), [
    ("doc_to_text", "{{ self.__init__.__globals__ }}", "'__init__'"),
    ("doc_to_text", "{{ ''.__class__.__mro__ }}", "'__class__'"),
    ("doc_to_choice", "{{ cycler.__init__.__globals__.os.system('touch IMPORTED') }}", "'__init__'"),
])
def test_templates_of_untrusted_tasks_render_sandboxed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       key: str, template: str, reason: str) -> None:
    _assert_refused_by_sandbox(tmp_path, monkeypatch, key, template, f"access to attribute {reason}")
    assert not (tmp_path / "IMPORTED").exists()


@pytest.mark.parametrize(("key", "template", "reason"), [
    ("doc_to_text", "{{ 'a' * 10**10 }}", "'*' would build 10,000,000,000 characters or items; at most 1,000,000"),
    ("doc_to_text", "{{ q|center(1000000000) }}", "filter center given 1,000,000,000 as a size"),
    ("doc_to_text", "{{ '{:>1000000000}'.format(q) }}", "str.format(): a format width or precision of 7 digits"),
    ("doc_to_choice", "{% for i in range(10**9) %}x{% endfor %}", "range() of 1,000,000,000 numbers"),
    ("doc_to_target", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "loops ran over 1,000,000 iterations"),
    ("doc_to_text", "{% set a = q * 100000 %}{% set b = a ~ a %}{{ b }}", "'~' built a value of 1,600,000 characters"),
])
def test_templates_of_untrusted_tasks_are_bounded_in_memory_and_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, template: str, reason: str) -> None:
    _assert_refused_by_sandbox(tmp_path, monkeypatch, key, template, reason)


def test_bounds_leave_ordinary_templates_alone(tmp_path: Path) -> None:
    _folder(tmp_path, doc_to_text="{% for c in options %}{{ loop.index }}. {{ c }} {% endfor %}{{ '%5.2f' % 3.14159 }} "
                                  "{{ '{:,}'.format(38000000) }} {{ options|join(', ') }} {{ 'x' ~ q ~ 'y' }}")
    assert "1. yes 2. no  3.14 38,000,000 yes, no xbeside 3y" in _prompts(tmp_path, _entry())


def test_sandboxed_templates_keep_filters_and_string_methods_and_trust_lifts_the_sandbox(tmp_path: Path) -> None:
    _folder(tmp_path, doc_to_text="{{ q.split(' ')[1] }}: {{ q|upper|regex_replace('BESIDE', 'B') }}")
    assert "3: B 3" in _prompts(tmp_path, _entry())
    _folder(tmp_path, doc_to_text="{{ q }} is a {{ q.__class__.__name__ }}")
    assert "beside 3 is a str" in _prompts(tmp_path, _entry(trust_code=True))


def test_templates_render_sandboxed_by_default_in_any_thread() -> None:
    import lm_eval.utils
    from jinja2.sandbox import SecurityError

    from mergeline.data.template_sandbox import install, trusted_templates

    install()
    outcome: list[BaseException | str] = []

    def render() -> None:
        try:
            outcome.append(lm_eval.utils.apply_template("{{ x.__class__ }}", {"x": 1}))
        except SecurityError as exc:
            outcome.append(exc)

    with trusted_templates(True):  # trust is the caller's context only: a new thread starts sandboxed
        assert lm_eval.utils.apply_template("{{ x.__class__.__name__ }}", {"x": 1}) == "int"
        thread = threading.Thread(target=render)
        thread.start()
        thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], SecurityError)


def test_data_files_are_read_from_the_yaml_folder_whatever_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path, relative=True)
    decoy = _rows(tmp_path / "elsewhere" / "qa.jsonl", "decoy")
    monkeypatch.chdir(decoy.parent)  # a qa.jsonl in the working folder too: lm-eval used to read that one
    entry = _entry()
    task = resolve_task(entry, tmp_path)
    assert "Q: beside 3\nA:" in {r["prompt"] for rows in task.build().values() for r in rows}
    used = (tmp_path / "lm_tasks" / "qa.jsonl").resolve()
    assert used in {p.resolve() for p in task.source_files}
    assert decoy.resolve() not in {p.resolve() for p in task.source_files}
    meta = write_task(task, tmp_path / "out")
    assert sha256_file(used) in meta["source_files"].values()  # what lineage records
    before = source_hashes([entry], tmp_path)
    _rows(used, "edited")
    assert source_hashes([entry], tmp_path) != before  # editing the file read changes what is checked


def test_data_named_by_an_included_yaml_is_read_from_that_yaml_folder(tmp_path: Path) -> None:
    (tmp_path / "lm_tasks").mkdir()
    (tmp_path / "lm_tasks" / "qa.yaml").write_text(yaml.safe_dump(
        {"task": "my_qa", "include": "../shared/base.yaml"}), encoding="utf-8")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.yaml").write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "task"} | {
        "dataset_kwargs": {"data_files": {"test": "data/*.jsonl"}}}), encoding="utf-8")
    data = _rows(shared / "data" / "qa.jsonl", "shared")
    task = resolve_task(_entry(), tmp_path)
    assert "Q: shared 3\nA:" in {r["prompt"] for rows in task.build().values() for r in rows}
    assert {data.resolve(), (shared / "base.yaml").resolve()} <= {p.resolve() for p in task.source_files}


def test_trust_code_is_a_real_boolean_and_only_for_task_folders() -> None:
    with pytest.raises(ValueError, match="trust_code applies to a task folder"):
        TaskEntry.model_validate({"name": "arc", "lm_eval": {"task": "arc_easy", "trust_code": True}})
    with pytest.raises(ValueError, match="valid boolean"):
        _entry(trust_code="yes")
    params = load_params(str(REPO / "params" / "default.yaml"),
                         [f"tasks={json.dumps([{'name': 'qa', 'lm_eval': {'task': 'q', 'include_path': 'x'}}])}"])
    assert params.task_entries[0].lm_eval.trust_code is False  # type: ignore[union-attr]
