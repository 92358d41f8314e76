"""Robustness cases: ``mergeline run`` / ``mergeline stage`` refuse absurd params before any work.

Every params file here points ``base_model`` at a folder that does not exist, so a params file that
passes validation stops at the base-model check (naming ``base_model``) and nothing heavy ever runs:
a case passes only when the error line names the key at fault, i.e. the bad value was caught first.
Params at their edges (empty, outputs under /proc or inside .git, a million tasks) are refused in one
line before anything is written, in a subprocess bounded in time and memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.robustness.kit import (
    LAUGHS, PARAMS, Case, cli, cli_bounded, intact, outcome, params, refused, snapshot, write_params,
)

def _bad(area: str, key: str, *sets: str, stage: str = "merge", via_set: bool = False) -> Case:
    """``run`` (or ``stage STAGE``) with params changed by ``sets``: exit 2, one line naming ``key``."""
    def check(folder: Path) -> str:
        path = write_params(folder, [] if via_set else list(sets))
        command = ["run"] if area == "run" else ["stage", stage]
        extra = [arg for s in sets for arg in ("--set", s)] if via_set else []
        code, _, err = cli([*command, "--params", str(path), *extra], cwd=folder)
        return refused(code, err, key)
    shown = ", ".join(sets)
    return Case(area, f"{'--set ' if via_set else ''}{shown}"[:90], f"exit 2, one line, names {key}", check)


def _file(area: str, name: str, write: Callable[[Path], Path], bounded: bool = False) -> Case:
    """``run``/``stage merge`` with a params file made by ``write(folder)``: one line, exit 2."""
    def check(folder: Path) -> str:
        path = write(folder)
        command = ["run"] if area == "run" else ["stage", "merge"]
        args = [*command, "--params", str(path)]
        code, _, err = cli_bounded(args, cwd=folder, timeout=30) if bounded else cli(args, cwd=folder)
        return outcome(code, err)
    return Case(area, name, "exit 2, one line", check)


def _text(content: bytes | str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / "params.yaml").write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder / "params.yaml"
    return write


def _edge(name: str, write: Callable[[Path], Path], key: str | None = None) -> Case:
    """``run`` on a params file at an edge, in a subprocess (a million tasks must not take memory or
    minutes): one line naming ``key``, and nothing written beside the params file (no lock, no state)."""
    def check(folder: Path) -> str:
        path = write(folder)
        before = snapshot(folder)
        code, _, err = cli_bounded(["run", "--params", str(path)], cwd=folder, timeout=60)
        return f"{refused(code, err, key)}, {'nothing written' if intact(before, folder) == 'intact' else 'written'}"
    return Case("run", name, f"exit 2, one line{f', names {key}' if key else ''}, nothing written", check)


def _with_folder(name: str, *sets: str) -> Callable[[Path], Path]:
    """The params of ``sets`` in a project folder that holds an (empty) ``name`` folder."""
    def write(folder: Path) -> Path:
        (folder / name).mkdir()
        return write_params(folder, list(sets))
    return write


def _many_tasks(count: int, block: bool) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        tasks = "".join("\n  - news" for _ in range(count)) if block else "[" + ", ".join(["news"] * count) + "]"
        (folder / "params.yaml").write_text(yaml.safe_dump({k: v for k, v in PARAMS.items() if k != "tasks"})
                                            + f"tasks: {tasks}\n")
        return folder / "params.yaml"
    return write


def _existing_file(folder: Path) -> str:
    """work_dir names an existing file."""
    (folder / "notes.txt").write_text("mine")
    path = write_params(folder, ["work_dir=notes.txt"])
    code, _, err = cli(["run", "--params", str(path)], cwd=folder)
    return refused(code, err, "work_dir")


CASES: list[Case] = [
    _bad("run", "weight_decay", "finetune.weight_decay=.inf"),
    _bad("run", "weight_decay", "finetune.weight_decay=1e400", via_set=True),
    _bad("run", "lr", "finetune.lr=.nan"),
    _bad("run", "talos.lr", "talos.lr=.inf"),
    _bad("run", "keep", "talos.keep=.nan"),
    _bad("run", "lambda", "merge.lambda=.nan", via_set=True),
    _bad("run", "lambdas", "merge.methods.ties.lambdas=[.inf]"),
    _bad("run", "densities", "merge.methods.ties.densities=[]"),
    _bad("run", "densities", "merge.methods.ties.densities=[.nan]"),
    _bad("run", "lambdas", "merge.methods.task_arithmetic.lambdas=[]"),
    _bad("run", "tasks", "tasks=[]"),
    _bad("run", "methods", "merge.methods={}"),
    _bad("run", "gamma", "merge.methods.ties.options={gamma: .inf}"),
    _bad("run", "options", "merge.methods.ties.options={grid: [1, .nan]}"),
    _bad("run", "bogus", "merge.methods.ties.options={bogus: 1}"),
    _bad("run", "model_name", "registry.model_name=a/b"),
    _bad("run", "model_name", "registry.model_name=a:b"),
    _bad("run", "model_name", "registry.model_name='  '"),
    _bad("run", "model_name", "registry.model_name=../up"),
    _bad("run", "champion_alias", "registry.champion_alias=v1"),
    _bad("run", "champion_alias", "registry.champion_alias=latest"),
    _bad("run", "champion_alias", "registry.champion_alias='has space'"),
    _bad("run", "candidate_alias", "registry.candidate_alias=champion"),
    _bad("run", "experiment", "experiment=''"),
    _bad("run", "experiment", f"experiment={'x' * 600}"),
    _bad("run", "n_train", "data.n_train=0"),
    _bad("run", "steps", "finetune.steps=-1"),
    _bad("run", "batch_size", "evaluate.batch_size=0"),
    _bad("run", "seed", "data.seed=-1"),
    _bad("run", "seed", f"finetune.seed={2**64}"),
    _bad("run", "work_dir", "work_dir=."),
    _bad("run", "work_dir", "work_dir=/"),
    _bad("run", "data_dir", "data_dir=.."),
    Case("run", "work_dir names an existing file", "exit 2, one line, names work_dir", _existing_file),
    _bad("run", "base_model", "base_model=params.yaml"),
    _file("run", "params file is not UTF-8", _text(b"experiment: \xff\xfe\n")),
    _file("run", "params file is a billion-laughs alias bomb", _text(LAUGHS + "experiment: *i\n"), bounded=True),
    _file("run", "params file is /dev/zero", lambda f: Path("/dev/zero"), bounded=True),
    _file("run", "params file is a folder", lambda f: f),
    _file("run", "params file is a YAML list", _text("- experiment: x\n")),
    _file("run", "params file does not exist", lambda f: f / "absent.yaml"),
    _bad("run", "--set", "merge.methods=&a [*a]", via_set=True),
    # Edges: empty, outputs in kernel or version-control folders, absurd sizes.
    _edge("params file is empty", _text("")),
    _edge("params file holds only comments", _text("# nothing here yet\n")),
    _edge("params file is an empty mapping {}", _text("{}\n")),
    _edge("work_dir under /proc", lambda f: write_params(f, ["work_dir=/proc/self/work"]), "work_dir"),
    _edge("data_dir under /sys", lambda f: write_params(f, ["data_dir=/sys/mergeline-data"]), "data_dir"),
    _edge("work_dir inside the project's .git", _with_folder(".git", "work_dir=.git/work"), "work_dir"),
    _edge("data_dir inside a .dvc folder", _with_folder(".dvc", "data_dir=.dvc/tasks"), "data_dir"),
    _edge("params file has no merge section", _text("tasks: [news]\n")),
    _edge("a million tasks on one line (2 MB)", _many_tasks(1_000_000, block=False)),
    _edge("a million tasks, one per line", _many_tasks(1_000_000, block=True)),
    _bad("run", "65 tasks", f"tasks=[{','.join(f't{i}' for i in range(65))}]"),
    _bad("run", "variants", f"merge.methods.ties.lambdas=[{','.join(f'{i / 100:g}' for i in range(1, 102))}]",
         f"merge.methods.ties.densities=[{','.join(f'{i / 100:g}' for i in range(1, 101))}]"),
    _bad("stage", "lambda", "merge.lambda=.inf", stage="merge"),
    _bad("stage", "weight_decay", "finetune.weight_decay=.inf", stage="fine-tune"),
    _bad("stage", "model_name", "registry.model_name=a/b", stage="register"),
    _bad("stage", "data_dir", "data_dir=.", stage="prepare-data"),
    _bad("stage", "densities", "merge.methods.ties.densities=[]", stage="merge"),
    _file("stage", "params file is /dev/zero", lambda f: Path("/dev/zero"), bounded=True),
    _file("stage", "params file is not UTF-8", _text(b"merge: \xc3\x28\n")),
]

REPRESENTATIVE = {
    "finetune.weight_decay=.inf", "merge.methods.ties.densities=[]", "merge.methods.ties.options={gamma: .inf}",
    "registry.model_name=a/b", "registry.champion_alias=v1", "work_dir=.", "params file is not UTF-8",
    "params file is a folder", "data_dir=.", "params file is empty", "work_dir inside the project's .git",
    "a million tasks on one line (2 MB)",
}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
