"""Robustness cases: ``mergeline merge`` stopped by a signal in the middle of writing its output.

Each case runs the CLI as a subprocess on models big enough that writing takes about a second,
freezes it (SIGSTOP) once it has written its first tensors, then signals it: the signal lands
mid-write every time. SIGTERM and SIGHUP must leave neither an output nor a temporary folder;
kill -9 can leave one, which the next merge in the same folder must remove.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.robustness.kit import ROOT, Case, cli, config, outcome, params, temps_left

# 40 tensors of 1 MiB: "merged k/40" is printed every 4 tensors, so the freeze leaves 90% to write.
_SHAPES = {f"model.layers.{i}.mlp.up_proj.weight": (512, 512) for i in range(40)}


def _big_zoo(root: Path) -> dict[str, Path]:
    gen = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=gen) for name, shape in _SHAPES.items()}
    models = {}
    for name, scale in (("base", 0.0), ("a", 0.02), ("b", 0.02)):
        folder = root / "models" / name
        folder.mkdir(parents=True)
        weights = {n: (t + scale * torch.randn(t.shape, generator=gen)).contiguous() for n, t in base.items()}
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": len(_SHAPES),
                                                        "torch_dtype": "float32"}))
        models[name] = folder
    return models


def _frozen_merge(folder: Path, cfg: Path) -> subprocess.Popen[str] | None:
    """``mergeline merge`` into ``folder/out``, frozen once it writes (None: it never did)."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mergeline.cli", "merge", str(cfg), "--out", str(folder / "out")],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("merged "):
            proc.send_signal(signal.SIGSTOP)
            return proc
    proc.wait()
    return None


def _stopped(signum: int) -> Callable[[Path], str]:
    def check(folder: Path) -> str:
        cfg = config(folder / "merge.yaml", _big_zoo(folder))
        proc = _frozen_merge(folder, cfg)
        if proc is None:
            return "never wrote"
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
        written = "no output" if not (folder / "out").exists() else "output written"
        seen = f"{outcome(proc.returncode, err)}, {written}"
        if signum == signal.SIGKILL:
            code, _, err = cli(["merge", str(cfg), "--out", str(folder / "other"), "--quiet"], cwd=folder)
            return f"{seen}; next merge in the folder: {outcome(code, err)}, {temps_left(folder)}"
        return f"{seen}, {temps_left(folder)}"
    return check


CASES: list[Case] = [
    Case("merge", "SIGTERM in the middle of writing (CLI)", "exit 143, one line, no output, no temp left",
         _stopped(signal.SIGTERM)),
    Case("merge", "SIGHUP (terminal closed) in the middle of writing (CLI)",
         "exit 129, one line, no output, no temp left", _stopped(signal.SIGHUP)),
    Case("merge", "kill -9 in the middle of writing (CLI)",
         "killed (signal 9), no output; next merge in the folder: exit 0, no temp left", _stopped(signal.SIGKILL)),
]

REPRESENTATIVE: set[str] = set()  # CI: tests/integration/test_merge_stop.py


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
