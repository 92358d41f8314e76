"""``merge --out``/``--overwrite`` replace only what mergeline provably wrote, and never write into a
work folder's stage outputs; two projects naming one ``work_dir`` never run at once. Through the CLI,
on tiny Llama models (``tests/merge_fixtures.py``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mergeline.cli import main
from mergeline.finetune.checkpoint import extract_task_vector
from mergeline.runlock import RunLock
from tests.merge_fixtures import finetune, tiny_base

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base = tiny_base("llama", root / "base")
    return {"base": base, "a": finetune(base, root / "a", seed=1), "b": finetune(base, root / "b", seed=2)}


def _config(folder: Path, models: dict[str, Path], lam: float = 0.5) -> Path:
    path = folder / f"merge-{lam}.yaml"
    path.write_text(yaml.safe_dump({
        "merge_method": "task_arithmetic", "base_model": str(models["base"]), "parameters": {"lambda": lam},
        "models": [{"model": str(models[k]), "parameters": {"weight": 1.0}} for k in ("a", "b")]}))
    return path


def _merge(capsys: pytest.CaptureFixture[str], config: Path, out: Path, *args: str) -> tuple[int, list[str]]:
    code = main(["merge", str(config), "--out", str(out), "--quiet", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _lookalike(folder: Path) -> Path:
    user = folder / "mine"
    user.mkdir()
    for name in ("meta.json", "train.jsonl", "finetune.json", "task_vector.json", "merge_report.json"):
        (user / name).write_text("{}\n")
    (user / "thesis.tex").write_text("years of work")
    return user


def _output_with_notes(folder: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> Path:
    assert _merge(capsys, _config(folder, models), folder / "merged")[0] == 0
    (folder / "merged" / "notes.txt").write_text("the user's notes beside the model")
    return folder / "merged"


@pytest.mark.parametrize("make", [lambda f, m, c: _lookalike(f), _output_with_notes],
                         ids=["folder with mergeline's file names", "previous output plus a user's file"])
def test_overwrite_refuses_a_folder_mergeline_did_not_wholly_write(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str], make: Callable
) -> None:
    target = make(tmp_path, models, capsys)
    before = _tree(target)
    code, err = _merge(capsys, _config(tmp_path, models, 0.25), target, "--overwrite")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {target}"), err
    assert "refusing to replace" in err[0] and "delete" in err[0]
    assert _tree(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.")]  # no temporary folder


def test_overwrite_replaces_a_previous_output_whole(tmp_path: Path, models: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    assert _merge(capsys, _config(tmp_path, models), out, "--shard-size", "20KB")[0] == 0
    assert len(list(out.glob("*.safetensors"))) > 1
    code, err = _merge(capsys, _config(tmp_path, models, 0.25), out, "--overwrite")
    assert code == 0, err
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]  # the old shards went with it
    assert not (out / "model.safetensors.index.json").exists() and "0.25" in (out / "merge.yaml").read_text()


def _work(tmp_path: Path, models: dict[str, Path], locked: bool) -> Path:
    """A work folder holding a task vector as the pipeline writes it; ``locked``: a run has used it."""
    work = tmp_path / "project" / "data" / "work"
    extract_task_vector(models["base"], models["a"], work / "vectors" / "a")
    if locked:
        with RunLock(tmp_path / "project", "mergeline run", work):
            pass
    return work


@pytest.mark.parametrize(("place", "overwrite", "locked", "message"), [
    ("vectors/a/merged", False, False, "is inside .*vectors/a, an output mergeline wrote"),
    ("vectors/a", True, False, "holds a task vector that mergeline wrote, not a merged model"),
    ("vectors", True, False, r"not a mergeline output \(no .mergeline-output\)"),
    ("vectors/a", True, True, "is inside .*work, a mergeline work folder"),
    ("merged/new", False, True, "is inside .*work, a mergeline work folder"),
    (".", True, True, "is a mergeline work folder"),
])
def test_out_in_a_work_folders_stage_outputs_is_refused(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str],
    place: str, overwrite: bool, locked: bool, message: str,
) -> None:
    work = _work(tmp_path, models, locked)
    before = _tree(work)
    code, err = _merge(capsys, _config(tmp_path, models), work / place, *(["--overwrite"] if overwrite else []))
    assert code == 2 and len(err) == 1, err
    assert re.search(message, err[0]), err[0]
    assert _tree(work) == before


def test_a_second_project_naming_the_same_work_dir_is_refused(tmp_path: Path) -> None:
    from tests.integration.pipeline_project import project_env, shared_tiny_base

    work = tmp_path / "shared-work"
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    params.update(base_model=str(shared_tiny_base()), work_dir=str(work))
    second = tmp_path / "second"
    second.mkdir()
    (second / "params.yaml").write_text(yaml.safe_dump(params))
    with RunLock(tmp_path / "first", "mergeline run", work) as first:
        proc = subprocess.run([sys.executable, "-m", "mergeline.cli", "run", "--params", "params.yaml"], cwd=second,
                              env={**project_env(second), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                              timeout=300)
        assert first.holder is not None
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {work}/.mergeline-work: this work folder is in use by another mergeline run "
                           f"(pid {os.getpid()} on "), line
    assert f"project {tmp_path / 'first'})" in line
    assert not (second / ".prefect").exists() and not (second / "mlflow.db").exists()  # nothing started
