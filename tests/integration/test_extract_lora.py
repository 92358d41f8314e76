"""``mergeline extract-lora``: the adapter it writes loads in PEFT and rebuilds the model's linear weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergeline.cli import main
from tests.lora_fixtures import peft_merged_state
from tests.merge_fixtures import load_tensors, tiny_base, write_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Llama base and a 'fine-tune' whose linear weights moved by rank-2 updates (norms moved too)."""
    root = tmp_path_factory.mktemp("extract")
    base = tiny_base("llama", root / "base")
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for name, t in load_tensors(base).items():
        if t.dim() == 2 and "proj" in name:
            t = t + 0.05 * torch.randn(t.shape[0], 2, generator=gen) @ torch.randn(2, t.shape[1], generator=gen)
        elif name.endswith("norm.weight"):
            t = t + 0.01
        tensors[name] = t
    return base, write_checkpoint(root / "model", tensors, config_from=base)


def test_adapter_loads_in_peft_and_rebuilds_the_linear_weights(pair: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    base, model = pair
    out = tmp_path / "adapter"
    assert main(["extract-lora", str(model), "--base", str(base), "--rank", "2", "--out", str(out), "--quiet"]) == 0
    assert "relative error 0.0000" in capsys.readouterr().out
    report = json.loads((out / "extract_report.json").read_text())
    assert report["modules"] == 14 and report["relative_error"] < 1e-5  # 2 layers × 7 projections
    assert len(report["dropped"]) == 5  # the norms: 2 per layer and the final one
    merged, wanted = peft_merged_state(base, out), load_tensors(model)
    for name, tensor in wanted.items():
        if "proj" in name:
            assert torch.allclose(merged[name], tensor, atol=1e-5), name
        elif name.endswith("norm.weight"):  # not carried by a LoRA: PEFT leaves the base's
            assert torch.equal(merged[name], load_tensors(base)[name]), name


def test_lower_rank_reports_the_error_it_makes(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, model = pair
    out = tmp_path / "r1"
    assert main(["extract-lora", str(model), "--base", str(base), "--rank", "1", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert 0.05 < report["relative_error"] < 1.0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 1 and config["lora_alpha"] == 1 and config["peft_type"] == "LORA"


def test_bad_input_is_one_line_and_writes_nothing(pair: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    base, model = pair
    out = tmp_path / "bad"
    other = tiny_base("llama", tmp_path / "other", hidden_size=32, intermediate_size=64)
    capsys.readouterr()
    assert main(["extract-lora", str(model), "--base", str(base), "--rank", "0", "--out", str(out)]) == 2
    assert "--rank" in capsys.readouterr().err
    assert main(["extract-lora", str(model), "--base", str(other), "--rank", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape" in err[0]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert main(["extract-lora", str(model), "--base", str(base), "--rank", "2", "--out", str(user), "--overwrite"]) == 2
    assert not out.exists() and (user / "notes.txt").read_text() == "mine"
