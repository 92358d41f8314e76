"""``mergeline merge`` stopped mid-write: SIGTERM and SIGHUP leave no temporary folder; after kill -9
the next merge in the folder removes the one left. Real subprocesses on a Llama-shaped model big
enough that the write takes a while; the merge is frozen (SIGSTOP) once it writes, so the signal
lands mid-write every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.merge_fixtures import finetune, tiny_base

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def merge_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stop-zoo")
    base = tiny_base("llama", root / "base", hidden_size=256, intermediate_size=1024, num_hidden_layers=8)
    models = [finetune(base, root / name, seed=seed) for seed, name in enumerate(("a", "b"), start=1)]
    config = {"merge_method": "ties", "base_model": str(base),
              "models": [{"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}} for m in models]}
    path = root / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def _start_and_freeze(config: Path, folder: Path) -> subprocess.Popen[str]:
    """A merge into ``folder/out``, stopped (SIGSTOP) once it has started writing weights."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mergeline.cli", "merge", str(config), "--out", str(folder / "out")],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("merged "):  # "merged k/N tensors": inside the atomic write
            proc.send_signal(signal.SIGSTOP)
            break
    else:
        raise AssertionError(f"merge never wrote: exit {proc.wait()}, {proc.stderr.read() if proc.stderr else ''}")
    [temporary] = _temporaries(folder)
    assert any(temporary.iterdir()), "the frozen merge has written nothing yet"
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signal_mid_write_leaves_no_temporary(merge_config: Path, tmp_path: Path, signum: int) -> None:
    proc = _start_and_freeze(merge_config, tmp_path)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"error: stopped by {signal.Signals(signum).name}"], err
    assert not (tmp_path / "out").exists() and _temporaries(tmp_path) == []


def test_the_next_merge_removes_what_kill_9_left(merge_config: Path, tmp_path: Path) -> None:
    proc = _start_and_freeze(merge_config, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    [left] = _temporaries(tmp_path)
    assert left.name.startswith(".out.") and any(left.iterdir())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    again = subprocess.run([sys.executable, "-m", "mergeline.cli", "merge", str(merge_config), "--out",
                            str(tmp_path / "other"), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert not left.exists() and _temporaries(tmp_path) == [] and (tmp_path / "other").is_dir()
