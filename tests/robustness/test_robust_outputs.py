"""Robustness cases: ``mergeline merge`` never destroys user data, and never writes a non-finite model.

Every case builds three tiny models (``kit.zoo``) in its own folder and calls the CLI in this
process. "Looks like an output" is not proof: a folder holding files named as mergeline names its
outputs', or a previous output the user added to, is never replaced, and no output goes inside a work
folder or a stage output there (a task vector).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mergeline.errors import MergelineError
from mergeline.finetune.checkpoint import extract_task_vector
from mergeline.io.atomic import atomic_dir
from mergeline.io.outputs import MARKER
from mergeline.merge.checks import load_merge_config
from mergeline.merge.engine import run_merge
from mergeline.runlock import RunLock
from tests.robustness.kit import (
    Case, cli, config, file_size_limit, intact, outcome, params, refused, snapshot, temps_left, zoo,
)

REFUSED = "exit 2, one line, intact, no temp left"


def _out_case(name: str, expected: str, out: Callable[[Path, dict[str, Path]], Path | str],
              watch: Callable[[Path, dict[str, Path]], Path] | None = None, overwrite: bool = False,
              cwd: Callable[[Path], Path] | None = None) -> Case:
    """``merge --out OUT``: the outcome, whether ``watch`` (default: the folder) kept its bytes, and
    whether a temporary folder was left behind."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        cfg = config(folder / "merge.yaml", models)
        target = out(folder, models)
        watched = watch(folder, models) if watch else folder / "models"
        before = snapshot(watched)
        code, _, err = cli(["merge", str(cfg), "--out", str(target), "--quiet", *(["--overwrite"] if overwrite else [])],
                           cwd=cwd(folder) if cwd else folder)
        return f"{outcome(code, err)}, {intact(before, watched)}, {temps_left(folder)}"
    return Case("merge", name, expected, check)


def _user_folder(folder: Path, _: dict[str, Path]) -> Path:
    user = folder / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    return user


def _previous_output(folder: Path, models: dict[str, Path]) -> Path:
    out = folder / "merged"
    code, _, err = cli(["merge", str(config(folder / "first.yaml", models)), "--out", str(out), "--quiet"])
    assert code == 0, err
    return out


def _link(folder: Path, models: dict[str, Path]) -> Path:
    (folder / "link").symlink_to(models["base"], target_is_directory=True)
    return folder / "link"


def _overwrite_case(folder: Path) -> str:
    """A previous mergeline output, --overwrite: replaced by the new merge, its old files gone (the
    previous merge wrote several shards, the new one writes one file)."""
    models = zoo(folder)
    out = folder / "merged"
    code, _, err = cli(["merge", str(config(folder / "first.yaml", models)), "--out", str(out), "--shard-size", "1KB",
                        "--quiet"])
    assert code == 0 and len(list(out.glob("*.safetensors"))) > 1, err
    cfg = config(folder / "merge.yaml", models, parameters={"lambda": 0.25})
    code, _, err = cli(["merge", str(cfg), "--out", str(out), "--overwrite", "--quiet"])
    new = [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"] and "0.25" in (out / "merge.yaml").read_text()
    return f"{outcome(code, err)}, {'replaced' if new else 'not replaced'}, {temps_left(folder)}"


def _lookalike(names: tuple[str, ...]) -> Callable[[Path, dict[str, Path]], Path]:
    """A user's folder holding files named as mergeline's outputs name theirs, and their own work."""
    def make(folder: Path, _: dict[str, Path]) -> Path:
        user = _user_folder(folder, {})
        for name in names:
            (user / name).write_text("{}\n")
        return user
    return make


def _added_to_output(folder: Path, models: dict[str, Path]) -> Path:
    out = _previous_output(folder, models)
    (out / "notes.txt").write_text("the user's notes, kept beside the model")
    return out


def _vector(folder: Path, models: dict[str, Path]) -> Path:
    """``project/work/vectors/a``: a task vector as the pipeline writes it."""
    work = folder / "project" / "work"
    extract_task_vector(models["base"], models["a"], work / "vectors" / "a")
    return work / "vectors" / "a"


def _in_work_folder(folder: Path, models: dict[str, Path]) -> Path:
    """A new folder in a work folder that a run has used (and so marked)."""
    work = _vector(folder, models).parent.parent
    with RunLock(folder / "project", "mergeline run", work):
        pass
    return work / "mine"


def _disk_full(folder: Path) -> str:
    """The output filesystem fills up mid-write (RLIMIT_FSIZE: writes past 2 KB fail with EFBIG)."""
    models = zoo(folder)
    cfg = config(folder / "merge.yaml", models)
    with file_size_limit(2048):
        code, _, err = cli(["merge", str(cfg), "--out", str(folder / "out"), "--quiet"])
    written = "no output" if not (folder / "out").exists() else "output written"
    return f"{outcome(code, err)}, {written}, {temps_left(folder)}"


def _interrupted(folder: Path) -> str:
    """Ctrl-C (KeyboardInterrupt) in the middle of writing the merged tensors (library call)."""
    models = zoo(folder)
    cfg = load_merge_config(config(folder / "merge.yaml", models))

    def progress(line: str) -> None:
        if line.startswith("merged"):
            raise KeyboardInterrupt

    try:
        run_merge(cfg, folder / "out", progress=progress)
        seen = "finished"
    except KeyboardInterrupt:
        seen = "interrupted"
    written = "no output" if not (folder / "out").exists() else "output written"
    return f"{seen}, {written}, {temps_left(folder)}"


def _mid_write_error(out: str) -> Callable[[Path], str]:
    """A merge into ``folder/out`` that fails on a tensor after others were written (λ overflows on
    one layer only): no output, no temporary folder, and no parent folder made for it."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        cfg = config(folder / "merge.yaml", models, per_model={"weight": 1e3},
                     parameters={"lambda": [{"filter": "layers.1.mlp", "value": 3e38}, {"value": 0.5}]})
        code, _, err = cli(["merge", str(cfg), "--out", str(folder / out), "--quiet"])
        top = folder / Path(out).parts[0]
        written = "no output" if not top.exists() else "output written"
        return f"{outcome(code, err)}, {written}, {temps_left(folder)}"
    return check


def _stage_output(previous: bool) -> Callable[[Path], str]:
    """What every stage writes its output through (``atomic_dir``), over a user's folder or over the
    stage's own previous output."""
    def check(folder: Path) -> str:
        if previous:
            target = folder / "vector"
            with atomic_dir(target, kind="task-vector") as tmp:
                (tmp / "old.txt").write_text("previous output")
        else:
            target = _user_folder(folder, {})
        before = snapshot(target)
        try:
            with atomic_dir(target, kind="task-vector") as tmp:
                (tmp / "new.txt").write_text("new output")
            seen = "replaced" if sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"] else "mixed"
        except MergelineError:
            seen = f"refused, {intact(before, target)}"
        return f"{seen}, {temps_left(folder)}"
    return check


def _number_case(name: str, key: str, method: str = "task_arithmetic", parameters: dict | None = None,
                 per_model: dict | None = None, args: tuple[str, ...] = (), **extra: object) -> Case:
    """A merge with an absurd or non-finite number: refused with one line naming it, nothing written."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        cfg = config(folder / "merge.yaml", models, method=method, parameters=parameters, per_model=per_model, **extra)
        code, _, err = cli(["merge", str(cfg), "--out", str(folder / "out"), "--quiet", *args])
        written = "nothing written" if not (folder / "out").exists() and temps_left(folder) == "no temp left" else "written"
        return f"{refused(code, err, key)}, {written}"
    return Case("merge", name, f"exit 2, one line, names {key}, nothing written", check)


CASES: list[Case] = [
    # Output folders: never destroy user data.
    _out_case("--out is a folder of the user's files", REFUSED, _user_folder, watch=lambda f, m: f / "mine"),
    _out_case("--out is a folder of the user's files, --overwrite", REFUSED, _user_folder,
              watch=lambda f, m: f / "mine", overwrite=True),
    _out_case("--out is the folder holding the input models", REFUSED, lambda f, m: f / "models"),
    _out_case("--out is the folder holding the inputs, --overwrite", REFUSED, lambda f, m: f / "models", overwrite=True),
    _out_case("--out is the base model folder", REFUSED, lambda f, m: m["base"]),
    _out_case("--out is a fine-tuned input folder, --overwrite", REFUSED, lambda f, m: m["a"], overwrite=True),
    _out_case("--out is inside the base model folder", REFUSED, lambda f, m: m["base"] / "merged"),
    _out_case("--out is an input weight file", REFUSED, lambda f, m: m["base"] / "model.safetensors"),
    _out_case("--out is below an input weight file", REFUSED, lambda f, m: m["base"] / "model.safetensors" / "x"),
    _out_case("--out is the config file", REFUSED, lambda f, m: f / "merge.yaml", watch=lambda f, m: f / "merge.yaml"),
    _out_case("--out . (the folder holding config and models)", REFUSED, lambda f, m: ".", watch=lambda f, m: f),
    _out_case("--out . in an empty working folder", "exit 2, one line, intact, no temp left", lambda f, m: ".",
              cwd=lambda f: (f / "empty").mkdir() or f / "empty", watch=lambda f, m: f),
    _out_case("--out '' (empty: the working folder)", REFUSED, lambda f, m: "", watch=lambda f, m: f),
    _out_case("--out .. (holds the working folder)", REFUSED, lambda f, m: "..",
              cwd=lambda f: (f / "sub").mkdir() or f / "sub", watch=lambda f, m: f),
    _out_case("--out is a symlink to the base model", REFUSED, _link),
    _out_case("--out is an existing previous output, no --overwrite", REFUSED, _previous_output,
              watch=lambda f, m: f / "merged"),
    _out_case("--out is an existing empty folder", "exit 0, intact, no temp left",
              lambda f, m: (f / "empty").mkdir() or f / "empty"),
    _out_case("--out in an unwritable place (/sys)", "exit 1, one line, intact, no temp left",
              lambda f, m: Path("/sys") / f"mergeline-{os.getpid()}"),
    _out_case("--out needs missing parent folders", "exit 0, intact, no temp left", lambda f, m: f / "new" / "deep" / "out"),
    Case("merge", "--out is a previous mergeline output, --overwrite", "exit 0, replaced, no temp left", _overwrite_case),
    _out_case("--out holds mergeline's file names and the user's, --overwrite", REFUSED,
              _lookalike(("meta.json", "train.jsonl", "finetune.json", "task_vector.json", "merge_report.json",
                          ".mergeline_import.json")), watch=lambda f, m: f / "mine", overwrite=True),
    _out_case("--out holds a dataset's file names (meta.json, *.jsonl) and the user's, --overwrite", REFUSED,
              _lookalike(("meta.json", "train.jsonl", "test.jsonl")), watch=lambda f, m: f / "mine", overwrite=True),
    _out_case("--out holds a task vector's file names and the user's, --overwrite", REFUSED,
              _lookalike(("task_vector.json", "task_vector.safetensors")), watch=lambda f, m: f / "mine",
              overwrite=True),
    _out_case("--out holds a fine-tune's file names and the user's, --overwrite", REFUSED,
              _lookalike(("finetune.json", "config.json", "model.safetensors")), watch=lambda f, m: f / "mine",
              overwrite=True),
    _out_case("--out is a previous output the user added a file to, --overwrite", REFUSED, _added_to_output,
              watch=lambda f, m: f / "merged", overwrite=True),
    _out_case("--out is inside a task vector folder", REFUSED, lambda f, m: _vector(f, m) / "merged",
              watch=lambda f, m: f / "project" / "work"),
    _out_case("--out is a task vector folder of a work folder, --overwrite", REFUSED, _vector,
              watch=lambda f, m: f / "project" / "work", overwrite=True),
    _out_case("--out is a new folder inside a work folder", REFUSED, _in_work_folder,
              watch=lambda f, m: f / "project" / "work"),
    Case("stage", "a stage output lands on a user's folder", "refused, intact, no temp left", _stage_output(False)),
    Case("stage", "a stage output replaces its previous output", "replaced, no temp left", _stage_output(True)),
    Case("merge", "disk full in the middle of writing", "exit 1, one line, no output, no temp left", _disk_full),
    Case("merge", "Ctrl-C in the middle of writing (library)", "interrupted, no output, no temp left", _interrupted),
    Case("merge", "error on a tensor after others were written", "exit 2, one line, no output, no temp left",
         _mid_write_error("out")),
    Case("merge", "error mid-write, --out in new parent folders", "exit 2, one line, no output, no temp left",
         _mid_write_error("new/deep/out")),
    # Numbers: nothing non-finite or absurd reaches a model.
    _number_case("lambda = 1e308 (beyond float32: all-Inf model on main)", "lambda", parameters={"lambda": 1e308}),
    _number_case("lambda = 1e300, dtype float64 (overflows to Inf)", "overflow", parameters={"lambda": 1e300},
                 per_model={"weight": 1e10}, dtype="float64"),
    _number_case("lambda = 3e38, weight 1e3 (float32 overflow)", "overflow", parameters={"lambda": 3e38},
                 per_model={"weight": 1e3}),
    _number_case("lambda = .inf", "lambda", parameters={"lambda": float("inf")}),
    _number_case("lambda = .nan", "lambda", parameters={"lambda": float("nan")}),
    _number_case("lambda = '1e400' (a string that reads as Inf)", "lambda", parameters={"lambda": "1e400"}),
    _number_case("weight = .inf", "weight", per_model={"weight": float("inf")}),
    _number_case("weight = -1e308 (linear)", "weight", method="linear", parameters={"lambda": None},
                 per_model={"weight": -1e308}),
    _number_case("weight = 3e38 (linear: the weighted sum overflows)", "overflow", method="linear",
                 parameters={"lambda": None, "normalize": False}, per_model={"weight": 3e38}),
    _number_case("ties lambda = 1e39 (beyond float32)", "lambda", method="ties", parameters={"lambda": 1e39},
                 per_model={"density": 0.5}),
    _number_case("ties lambda = 3e38, weight 1e3 (overflow)", "overflow", method="ties",
                 parameters={"lambda": 3e38, "normalize": False}, per_model={"density": 0.5, "weight": 1e3}),
    _number_case("out_dtype float16, lambda 1e6 (overflow on the cast)", "overflow", parameters={"lambda": 1e6},
                 out_dtype="float16"),
    _number_case("lambda gradient [0.5, .inf]", "lambda", parameters={"lambda": [0.5, float("inf")]}),
    _number_case("lambda filter list with .nan", "lambda",
                 parameters={"lambda": [{"filter": "mlp", "value": float("nan")}, {"value": 1.0}]}),
    _number_case("ties density = .nan", "density", method="ties", per_model={"density": float("nan")}),
    _number_case("ties density = 0", "density", method="ties", per_model={"density": 0.0}),
    _number_case("ties density = -0.5", "density", method="ties", per_model={"density": -0.5}),
    _number_case("ties density = 2", "density", method="ties", per_model={"density": 2.0}),
    _number_case("dare_ties lambda = 1e308", "lambda", method="dare_ties", parameters={"lambda": 1e308},
                 per_model={"density": 0.5}),
    _number_case("breadcrumbs gamma = .nan", "gamma", method="breadcrumbs",
                 per_model={"density": 0.9, "gamma": float("nan")}),
    _number_case("seed = 2**70", "seed", seed=2**70),
    _number_case("seed = -1", "seed", seed=-1),
    _number_case("--shard-size 0", "shard size", args=("--shard-size", "0")),
    _number_case("--shard-size=-1GB", "size", args=("--shard-size=-1GB",)),
    _number_case("--shard-size 1e400GB", "size", args=("--shard-size", "1e400GB")),
]

REPRESENTATIVE = {
    "--out is a folder of the user's files", "--out is a folder of the user's files, --overwrite",
    "--out is the folder holding the input models", "--out is an input weight file",
    "--out . (the folder holding config and models)", "--out is a symlink to the base model",
    "--out is a previous mergeline output, --overwrite", "--out holds mergeline's file names and the user's, --overwrite",
    "--out is inside a task vector folder", "disk full in the middle of writing",
    "Ctrl-C in the middle of writing (library)", "error on a tensor after others were written",
    "lambda = 1e308 (beyond float32: all-Inf model on main)", "lambda = 3e38, weight 1e3 (float32 overflow)",
    "weight = 3e38 (linear: the weighted sum overflows)", "out_dtype float16, lambda 1e6 (overflow on the cast)",
    "seed = 2**70", "a stage output lands on a user's folder",
}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
