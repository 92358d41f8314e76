"""Robustness cases: an lm-eval task folder (``include_path``) is someone else's code.

Its ``!function`` tags (in the task YAML or a YAML it includes), ``!!python/`` tags and Jinja templates
that reach Python objects must not run unless the task says ``trust_code: true``, and its templates
may not exhaust memory or time: ``mergeline run``
refuses in one line naming the file's key, before any lock or work, and the folder's Python (whose
import or call would leave a marker file) never runs. A plain task folder, and one trusted, pass the
task checks and stop at the missing base model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.robustness.kit import Case, params, run_refused, write_params

MARKERS = ("IMPORTED", "CALLED", "RAN")
TASK = {"task": "my_qa", "dataset_path": "json", "output_type": "multiple_choice", "test_split": "test",
        "doc_to_text": "Q: {{q}}\nA:", "doc_to_choice": "options", "doc_to_target": "gold"}


def _folder(folder: Path, extra: str = "", included: str | None = None, **config: object) -> Path:
    """``folder/lm_tasks``: ``qa.yaml`` (TASK, ``config``, then raw YAML lines ``extra``), its data
    ``qa.jsonl``, ``utils.py`` whose import and call leave ``IMPORTED`` / ``CALLED`` in ``folder``, and
    (``included``) ``base.yaml`` with that text, which ``qa.yaml`` includes."""
    tasks = folder / "lm_tasks"
    tasks.mkdir()
    (tasks / "qa.jsonl").write_text("".join(json.dumps({"q": f"question {i}", "options": ["yes", "no"], "gold": i % 2})
                                            + "\n" for i in range(12)))
    data = {"dataset_kwargs": {"data_files": {"test": str(tasks / "qa.jsonl")}}}
    if included is not None:
        (tasks / "base.yaml").write_text(included)
        data["include"] = "base.yaml"
    (tasks / "qa.yaml").write_text(yaml.safe_dump({**TASK, **data, **config}, sort_keys=False) + extra)
    (tasks / "utils.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(folder / 'IMPORTED')!r}).touch()\n"
        "def process_docs(dataset):\n"
        f"    Path({str(folder / 'CALLED')!r}).touch()\n"
        "    return dataset\n")
    return tasks


def _case(name: str, key: str, make: Callable[[Path], object], expected: str | None = None,
          **lm_eval: object) -> Case:
    """``run`` with tasks news and ``qa`` (lm-eval ``my_qa`` from ``lm_tasks``) after ``make(folder)``."""
    def check(folder: Path) -> str:
        make(folder)
        entry = {"name": "qa", "lm_eval": {"task": "my_qa", "include_path": "lm_tasks", **lm_eval}}
        write_params(folder, tasks=["news", entry])
        return run_refused(folder, key, MARKERS)
    return Case("tasks", name, expected or f"exit 2, one line, names {key}, no code ran, nothing written", check)


def _escape(template: str) -> str:
    """A Jinja template that, outside a sandbox, writes the marker ``RAN`` through Python's ``open``."""
    return template.replace("OPEN", "open('RAN', 'w')")


CASES: list[Case] = [
    _case("!function in the task YAML (process_docs)", "process_docs",
          lambda f: _folder(f, "process_docs: !function utils.process_docs\n")),
    _case("!function in a YAML the task includes", "process_docs",
          lambda f: _folder(f, included="process_docs: !function utils.process_docs\n")),
    _case("!function as a metric of metric_list", "metric_list",
          lambda f: _folder(f, "metric_list:\n  - metric: !function utils.process_docs\n")),
    _case("!!python/object/apply tag in the task YAML", "process_docs",
          lambda f: _folder(f, "process_docs: !!python/object/apply:os.system ['touch RAN']\n")),
    _case("Jinja reaching __globals__ through self (doc_to_text)", "doc_to_text",
          lambda f: _folder(f, doc_to_text=_escape("{{ self.__init__.__globals__.__builtins__.OPEN }}"))),
    _case("Jinja reaching object's subclasses (doc_to_choice)", "doc_to_choice",
          lambda f: _folder(f, doc_to_choice="{{ ''.__class__.__mro__[1].__subclasses__() }}")),
    _case("Jinja reaching os through cycler's globals (doc_to_target)", "doc_to_target",
          lambda f: _folder(f, doc_to_target="{{ cycler.__init__.__globals__.os.popen('touch RAN').read() }}")),
    _case("Jinja building a 10 GB string (doc_to_text)", "doc_to_text",
          lambda f: _folder(f, doc_to_text="{{ 'a' * 10**10 }}")),
    _case("Jinja nested loops of 10^10 steps (doc_to_choice)", "doc_to_choice",
          lambda f: _folder(f, doc_to_choice="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                             "{% endfor %}")),
    _case("!!python/name tag in a metric (lm-eval skips the YAML)", "metric_list",
          lambda f: _folder(f, "metric_list:\n  - metric: !!python/name:os.system\n")),
    _case("trust_code: 'yes' (a string, not a boolean)", "trust_code", lambda f: _folder(f), trust_code="yes"),
    _case("a plain task folder (control: accepted, stops at the base model)", "base_model", _folder),
    _case("!function with trust_code: true (consented: runs)", "base_model",
          lambda f: _folder(f, "process_docs: !function utils.process_docs\n"),
          "exit 2, one line, names base_model, code ran (IMPORTED, CALLED), nothing written", trust_code=True),
]

REPRESENTATIVE = {
    "!function in the task YAML (process_docs)", "!function in a YAML the task includes",
    "Jinja reaching __globals__ through self (doc_to_text)",
}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
