"""The engine with the methods added for mergekit parity (della … ramplus_tl): row blocks give what whole
tensors give, the GPU loop (run on the CPU) writes what the CPU engine writes, and a bad per-tensor
parameter fails before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergeline.merge import loop as merge_loop
from mergeline.merge.config import MergeConfig
from mergeline.errors import MergelineError
from mergeline.merge.engine import run_merge
from tests.merge_fixtures import load_tensors, write_checkpoint
from tests.unit.merge.test_merge_engine import _finetuned, _model
from tests.unit.merge.test_merge_prefetch import _use_gpu_loop

W = {"weight": 0.7}
CASES = {
    "della": ({"weight": 1.0, "density": 0.5, "epsilon": 0.2}, {"weight": 0.5, "density": 0.6}, {}),
    "della_linear": ({"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.4}, {"lambda": 0.8}),
    "model_stock": ({}, {}, {"filter_wise": True}),
    "sce": ({}, {}, {"select_topk": 0.4}),
    "nuslerp": (W, {"weight": 0.2}, {}),
    "multislerp": (W, {"weight": 0.2}, {}),
    "karcher": ({}, {}, {}),
    "nearswap": (None, {}, {"t": 0.05}),
    "arcee_fusion": (None, {}, {}),
    "passthrough": (None, {"scale": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]}, {}),
    "ram": ({}, {}, {"epsilon": 0.05}),
    "ramplus_tl": ({}, {}, {"epsilon": 0.05}),
    "tsv": ({"weight": 1.0}, {"weight": 0.5}, {"lambda": 0.8}),
    "iso_c": ({}, {}, {"lambda": 1.5}),
    "iso_cts": ({}, {}, {"common_space_fraction": 0.5}),
    "consensus_ta": ({}, {"tall_mask_lambda": 0.3}, {"consensus_k": 1}),
    "consensus_ties": ({"density": 0.3}, {"density": 0.5}, {"consensus_k": 1, "lambda": 0.9}),
}


def _models(tmp_path: Path, dtype: torch.dtype) -> dict[str, Path]:
    base = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _model(0, tied=True).items()}
    return {"base": write_checkpoint(tmp_path / "base", base),
            "a": write_checkpoint(tmp_path / "a", _finetuned(base, 1, scale=0.05), shards=3),
            "b": write_checkpoint(tmp_path / "b", _finetuned(base, 2, scale=0.05))}


def _config(method: str, models: dict[str, Path]) -> MergeConfig:
    pa, pb, params = CASES[method]
    entries = [] if pa is None else [{"model": str(models["a"]), "parameters": pa}]
    entries.append({"model": str(models["b"]), "parameters": pb})
    base = {} if method in ("karcher", "passthrough") else {"base_model": str(models["base"])}
    return MergeConfig.model_validate({"merge_method": method, **base, "models": entries, "parameters": params})


@pytest.mark.parametrize("method", list(CASES))
def test_row_blocks_and_gpu_loop_write_what_whole_tensors_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               method: str) -> None:
    models = _models(tmp_path, torch.bfloat16 if method == "della" else torch.float32)
    cfg = _config(method, models)
    whole = run_merge(cfg, tmp_path / "whole")
    monkeypatch.setattr(merge_loop, "BLOCK_ELEMENTS", 16)  # 8-wide rows: blocks of 2 rows
    blocks = run_merge(cfg, tmp_path / "blocks")
    _use_gpu_loop(monkeypatch)
    loop = run_merge(cfg, tmp_path / "gpu-loop")
    assert whole.weight_sha256 == blocks.weight_sha256 == loop.weight_sha256
    assert whole.report["method"] == loop.report["method"]
    merged, base = load_tensors(tmp_path / "whole"), load_tensors(models["base"])
    assert any(not torch.equal(merged[n], base[n]) for n in base if base[n].is_floating_point())
    assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])  # tied: merged once


def test_consensus_ties_needs_one_density_per_model(tmp_path: Path) -> None:
    models = _models(tmp_path, torch.float32)
    cfg = MergeConfig.model_validate({
        "merge_method": "consensus_ties", "base_model": str(models["base"]),
        "models": [{"model": str(models["a"]), "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.2}]}},
                   {"model": str(models["b"])}]})
    with pytest.raises(MergelineError, match=r"tensor '.*': consensus_ties trims over the whole model, so it needs one "
                                             r"density per model; model 0 has"):
        run_merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_della_epsilon_names_model_and_tensor(tmp_path: Path) -> None:
    models = _models(tmp_path, torch.float32)
    cfg = MergeConfig.model_validate({
        "merge_method": "della", "base_model": str(models["base"]),
        "models": [{"model": str(models["a"]), "parameters": {
            "weight": 1.0, "density": 0.8, "epsilon": [{"filter": "mlp", "value": 0.3}, {"value": 0.1}]}}]})
    with pytest.raises(MergelineError, match=r"models\[0\] \(.*/a\): parameter 'epsilon' = 0.3 for tensor 'model.layers.0.mlp.up_proj.weight'.*"
                                             r"density ± epsilon must lie in \(0, 1\)"):
        run_merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["model_stock", "nearswap", "passthrough", "ram"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_input_named_from_the_output_check(tmp_path: Path, method: str, value: float) -> None:
    """These methods check their output only (``nonfinite_propagates``): a NaN/Inf in an input must
    still come out as a non-finite output and be blamed on its file and tensor."""
    models = _models(tmp_path, torch.float32)
    name = "model.layers.1.mlp.up_proj.weight"
    b = load_tensors(models["b"])
    b[name][3, 2] = value
    models["b"] = write_checkpoint(tmp_path / "poisoned", b)
    with pytest.raises(MergelineError, match=rf"poisoned/model.safetensors: tensor '{name}' contains NaN or Inf"):
        run_merge(_config(method, models), tmp_path / "out")
    assert not (tmp_path / "out").exists()
