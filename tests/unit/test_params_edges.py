"""Params at their edges: empty files, outputs in kernel or git folders, absurd sizes.

Each is refused by ``mergeline run`` in one line, exit 2, in the supervising process (no lock taken,
no Prefect state written), and the sizes are refused by their count before the items are read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergeline.cli import main
from mergeline.errors import MergelineError
from mergeline.io.safe_read import load_yaml_text
from mergeline.params import MAX_TASKS, MAX_VARIANTS, PARAMS_YAML_NODES, load_params

VALID = {"experiment": "edges", "base_model": "./no-such-base", "tasks": ["news", "sentiment"], "device": "cpu",
         "merge": {"methods": {"task_arithmetic": {"lambdas": [0.5]}}}}


def _params(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**VALID, **changes}))
    return path


def _text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _flow_list(count: int, item: str = "news") -> str:
    return "[" + ",".join([item] * count) + "]"


CASES = {
    "empty file": (lambda t: _text(t, ""), "params file is empty"),
    "comments only": (lambda t: _text(t, "# nothing here yet\n"), "params file is empty"),
    "no merge section": (lambda t: _text(t, "tasks: [news]\n"), "merge.methods: needs at least one method"),
    "work_dir under /proc": (lambda t: _params(t, work_dir="/proc/self/work"), "work_dir '/proc/self/work'"),
    "data_dir under /sys": (lambda t: _params(t, data_dir="/sys/data"), "data_dir '/sys/data'"),
    "work_dir inside .git": (lambda t: _params(t, work_dir=".git/work"), "inside a .git folder"),
    "data_dir inside a nested .dvc": (lambda t: _params(t, data_dir="sub/.dvc/tasks"), "inside a .dvc folder"),
    # A million tasks fit in 2 MB: refused as written, before any node is composed.
    "a million tasks": (lambda t: _text(t, "tasks: " + _flow_list(1_000_000) + "\n"),
                        f"YAML has more than {PARAMS_YAML_NODES} nodes"),
    "more tasks than the cap": (lambda t: _params(t, tasks=[f"t{i}" for i in range(MAX_TASKS + 1)]),
                                f"tasks: {MAX_TASKS + 1} tasks; at most {MAX_TASKS}"),
    "more variants than the cap": (lambda t: _params(t, merge={"methods": {"ties": {
        "lambdas": [round(0.01 * i, 2) for i in range(1, 102)],
        "densities": [round(0.01 * i, 2) for i in range(1, 101)]}}}),
        f"the sweep has 10100 variants; at most {MAX_VARIANTS}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_refuses_in_one_line_before_any_state(case: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path)
    capsys.readouterr()
    code = main(["run", "--params", str(path)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert not (tmp_path / ".mergeline").exists() and not (tmp_path / ".prefect").exists()


def test_shared_memory_is_a_place_for_outputs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _params(tmp_path, work_dir="/dev/shm/mergeline-edges-work")
    assert main(["run", "--params", str(path)]) == 2
    assert "base_model" in capsys.readouterr().err  # past the output checks, stopped by the missing base


def test_node_bound_stops_reading_at_the_bound() -> None:
    # A syntax error after the bound is never reached: the text is not read (nor composed) past it.
    text = _flow_list(PARAMS_YAML_NODES + 10, "a")[:-1] + ", {unclosed"
    with pytest.raises(MergelineError, match=f"more than {PARAMS_YAML_NODES} nodes"):
        load_yaml_text(text, "params.yaml", PARAMS_YAML_NODES)


def test_task_cap_applies_before_the_tasks_are_read(tmp_path: Path) -> None:
    # Entries that would each fail validation: the count is refused first, not the first entry.
    path = _params(tmp_path, tasks=[{"name": "9bad", "bogus": i} for i in range(MAX_TASKS + 1)])
    with pytest.raises(MergelineError, match=f"tasks: {MAX_TASKS + 1} tasks"):
        load_params(path)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(MergelineError, match="nested more than 100 levels"):
        load_yaml_text("[" * 5000 + "]" * 5000, "deep.yaml")


def test_sweep_at_the_cap_is_accepted(tmp_path: Path) -> None:
    lambdas = [round(0.01 * i, 2) for i in range(1, 101)]
    params = load_params(_params(tmp_path, merge={"methods": {"ties": {"lambdas": lambdas, "densities": lambdas}}}))
    assert params.variant_count() == MAX_VARIANTS
