"""The in-memory API (``mergeline.merge.memory``) gives, bit for bit, what the file-based merge writes,
for every method, with gradients and filters, row blocks, bf16 ties, statistics passes and per-model
inputs given as state dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.merge import loop as merge_loop
from mergeline.merge.config import MergeConfig
from mergeline.merge.engine import run_merge
from mergeline.merge.memory import merge_state_dicts, merge_tensors
from mergeline.methods import method_names
from tests.merge_fixtures import load_tensors, write_checkpoint
from tests.unit.merge.test_merge_engine import _finetuned, _model

GRADIENT = [{"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.6}]
# method: (per-model parameters of a, b, c (None: not an input), global parameters, base given)
CASES: dict[str, tuple[list[dict | None], dict[str, Any], bool]] = {
    "task_arithmetic": ([{"weight": GRADIENT}, {"weight": -0.5}, None], {"lambda": 0.8}, True),
    "ties": ([{"weight": 1.0, "density": 0.3}, {"weight": 0.7, "density": [0.2, 0.6]}, None], {}, True),
    "dare_ties": ([{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.4}, None], {"seed": 3}, True),
    "breadcrumbs_ties": ([{"weight": 1.0, "density": 0.6, "gamma": 0.1}, {"weight": 0.5, "density": 0.5}, None], {}, True),
    "della": ([{"weight": 1.0, "density": 0.5, "epsilon": 0.2}, {"weight": 0.5, "density": 0.6}, None], {}, True),
    "linear": ([{"weight": 0.3}, {"weight": GRADIENT}, {"weight": 0.2}], {}, False),
    "slerp": ([None, {}, None], {"t": GRADIENT}, True),
    "nuslerp": ([{"weight": 0.4}, {"weight": 0.6}, None], {}, True),
    "multislerp": ([{"weight": 0.5}, {"weight": 0.2}, {"weight": 0.3}], {}, True),
    "karcher": ([{}, {}, {}], {}, False),
    "model_stock": ([{}, {}, {}], {}, True),
    "sce": ([{}, {}, {}], {"select_topk": 0.5}, True),
    "nearswap": ([None, {}, None], {"t": 0.05}, True),
    "arcee_fusion": ([None, {}, None], {}, True),
    "passthrough": ([None, {"scale": GRADIENT}, None], {}, False),
    "ram": ([{}, {}, {}], {"epsilon": 0.02}, True),
    "ramplus_tl": ([{}, {}, {}], {"epsilon": 0.02}, True),
    "breadcrumbs": ([{"weight": 1.0, "density": 0.6}, {"weight": 0.5, "density": 0.5}, None], {}, True),
    "dare_linear": ([{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.4}, None], {}, True),
    "della_linear": ([{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.6}, None], {}, True),
    "metagpt": ([{}, {}, {}], {"granularity": "layer"}, True),
    "talos": ([{"weight": 1.0}, {"weight": 0.5}, None], {"lambda": 0.7}, True),
    "tsv": ([{"weight": 1.0}, {"weight": 0.5}, {}], {"lambda": 0.8}, True),
    "iso_c": ([{}, {}, {}], {}, True),
    "iso_cts": ([{}, {}, {}], {"common_space_fraction": 0.5}, True),
    "consensus_ta": ([{}, {"tall_mask_lambda": 0.3}, {}], {"consensus_k": 2}, True),
    "consensus_ties": ([{"density": 0.3}, {"density": 0.5}, {}], {"consensus_k": 1}, True),
}


@pytest.fixture(scope="module")
def weights() -> dict[str, dict[str, torch.Tensor]]:
    """bf16 values (many equal magnitudes), tied embeddings, a non-float buffer."""
    base = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _model(0, tied=True).items()}
    return {"base": base, "a": _finetuned(base, 1, 0.05), "b": _finetuned(base, 2, 0.05), "c": _finetuned(base, 3, 0.02)}


def _both(tmp_path: Path, weights: dict[str, dict[str, torch.Tensor]], method: str, per_model: list[dict | None],
          params: dict[str, Any], with_base: bool, extra: dict[str, Any] | None = None
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    names = [n for n, p in zip("abc", per_model) if p is not None]
    files = {n: write_checkpoint(tmp_path / n, weights[n]) for n in ["base", *names]}
    config = {"merge_method": method, "dtype": "float32",
              "models": [{"model": str(files[n]), "parameters": per_model["abc".index(n)]} for n in names],
              "parameters": params, **({"base_model": str(files["base"])} if with_base else {})}
    run_merge(MergeConfig.model_validate(config), tmp_path / "out")
    memory = merge_state_dicts(method, weights["base"] if with_base else None, [weights[n] for n in names],
                               model_parameters=[per_model["abc".index(n)] for n in names], parameters=params,
                               dtype=torch.float32, **(extra or {}))
    return load_tensors(tmp_path / "out"), memory


def test_every_method_is_covered() -> None:
    assert set(CASES) | {"sta", "lata", "regmean"} == set(method_names())


@pytest.mark.parametrize("method", list(CASES))
def test_memory_merge_equals_file_merge(tmp_path: Path, weights: dict[str, dict[str, torch.Tensor]],
                                        method: str) -> None:
    per_model, params, with_base = CASES[method]
    files, memory = _both(tmp_path, weights, method, per_model, params, with_base)
    assert set(memory) == set(files)  # every tensor
    for name, expected in files.items():
        assert memory[name].dtype == expected.dtype and torch.equal(memory[name], expected), name
    assert any(not torch.equal(memory[n], weights["base"][n]) for n in files)


def test_row_blocks_and_threads_give_the_same_bits(tmp_path: Path, weights: dict[str, dict[str, torch.Tensor]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge_loop, "BLOCK_ELEMENTS", 16)  # 8-wide rows: blocks of 2 rows, gathered trims
    files, memory = _both(tmp_path, weights, "ties", *CASES["ties"])
    assert all(torch.equal(memory[n], files[n]) for n in files)


def test_per_model_inputs_as_state_dicts(tmp_path: Path, weights: dict[str, dict[str, torch.Tensor]]) -> None:
    importance = {n: torch.rand(t.shape, generator=torch.Generator().manual_seed(i))
                  for i, (n, t) in enumerate(weights["base"].items()) if t.is_floating_point()}
    write_checkpoint(tmp_path / "imp", importance)
    per_file = [{"weight": 1.0, "density": 0.3, "importance": str(tmp_path / "imp")}, {"weight": 0.5, "density": 0.5,
                                                                                       "importance": str(tmp_path / "imp")}]
    files, _ = _both(tmp_path, weights, "sta", [*per_file, None], {}, True)
    in_memory = [dict(p, importance=importance) for p in per_file]
    memory = merge_state_dicts("sta", weights["base"], [weights["a"], weights["b"]], model_parameters=in_memory,
                               dtype="float32")
    assert all(torch.equal(memory[n], files[n]) for n in files)
    # LATA's pretrained model (a global input) as a state dict
    pretrained = _finetuned(weights["base"], 9, 0.01)
    report: dict[str, Any] = {}
    lata = merge_state_dicts("lata", weights["base"], [weights["a"]], pretrained_model=pretrained, report=report,
                             scheme="linear_rank")
    assert report["method"] == "lata" and set(lata) == set(weights["base"])
    # RegMean's Gram matrices (one file per model) as state dicts
    gen = torch.Generator().manual_seed(4)
    grams = [{n: (x := torch.randn(2 * t.shape[1], t.shape[1], generator=gen)).T @ x
              for n, t in weights["base"].items() if t.is_floating_point() and t.dim() == 2 and "embed" not in n}
             for _ in range(2)]
    for i, g in enumerate(grams):
        write_checkpoint(tmp_path / f"gram{i}", g)
    files, _ = _both(tmp_path / "regmean", weights, "regmean", [{"gram": str(tmp_path / "gram0")},
                                                                 {"gram": str(tmp_path / "gram1")}, None], {}, True)
    memory = merge_state_dicts("regmean", weights["base"], [weights["a"], weights["b"]], dtype="float32",
                               model_parameters=[{"gram": g} for g in grams])
    assert all(torch.equal(memory[n], files[n]) for n in files) and set(memory) == set(files)


def test_merge_tensors_and_the_report() -> None:
    report: dict[str, Any] = {}
    merged = merge_state_dicts("metagpt", {"w": torch.zeros(2)}, [{"w": torch.tensor([3.0, 0.0])},
                                                                   {"w": torch.tensor([0.0, 4.0])}], report=report)
    assert torch.allclose(merged["w"], torch.tensor([1.08, 2.56]))  # METHODS.md §10
    assert report["lambdas"]["model"] == pytest.approx({"0": 0.36, "1": 0.64})
    out = merge_tensors("task_arithmetic", torch.zeros(2), [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])],
                        lambda_=0.5, model_parameters=[{"weight": 1.0}, {"weight": 1.0}])
    assert torch.equal(out, torch.tensor([2.0, 0.5]))  # METHODS.md §10 TA vector
    slerp = merge_tensors("slerp", torch.tensor([1.0, 0.0]), [torch.tensor([0.0, 1.0])], t=0.5)
    assert torch.allclose(slerp, torch.tensor([2 ** -0.5, 2 ** -0.5]))


def test_bad_input_is_one_line() -> None:
    base = {"w": torch.zeros(2)}
    with pytest.raises(MergelineError, match="unknown merge_method 'tyes'"):
        merge_state_dicts("tyes", base, [base])
    with pytest.raises(MergelineError, match="model_parameters: 1 entries for 2 models"):
        merge_state_dicts("ties", base, [base, base], model_parameters=[{}])
    with pytest.raises(MergelineError, match=r"models\[0\] \(<memory>/models\[0\]\): has no tensor 'w'"):
        merge_state_dicts("task_arithmetic", base, [{"v": torch.zeros(2)}], model_parameters=[{"weight": 1}])
    with pytest.raises(MergelineError, match="unknown parameter 'lamda'"):
        merge_state_dicts("task_arithmetic", base, [base], lamda=0.5, model_parameters=[{"weight": 1}])
    with pytest.raises(MergelineError, match="entry 'w' is not a tensor"):
        merge_state_dicts("task_arithmetic", base, [{"w": [1.0, 2.0]}], model_parameters=[{"weight": 1}])
