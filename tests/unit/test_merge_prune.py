"""Pruned merged variants: merged.json keeps each variant's config and hashes; a pruned folder comes back bit for bit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mergeline.params import load_params
from mergeline.pipeline.records import Variant
from mergeline.stages.common import StageContext
from mergeline.stages.merge import ensure_merged, merge_variant, prune_merged, write_merge_index
from tests.merge_fixtures import finetune, tiny_base

DEFAULT = Path(__file__).resolve().parents[2] / "params" / "default.yaml"


@pytest.fixture()
def merged(tmp_path: Path) -> tuple[StageContext, dict]:
    base = tiny_base("llama", tmp_path / "data/work/base")
    models = [finetune(base, tmp_path / f"data/work/checkpoints/t{i}", seed=i) for i in range(2)]
    ctx = StageContext(load_params(str(DEFAULT), ["tasks=[news,sentiment]"]), tmp_path)
    config = {"merge_method": "task_arithmetic", "base_model": "data/work/base", "dtype": "float32",
              "models": [{"model": str(m.relative_to(tmp_path)), "parameters": {"weight": 1.0}} for m in models],
              "parameters": {"lambda": 0.5}}
    records = {}
    for name, lam in (("ta_l0.5", 0.5), ("ta_l1", 1.0)):
        variant = Variant(name=name, method="task_arithmetic", lam=lam, density=None)
        records[name] = merge_variant(ctx, variant, {**config, "parameters": {"lambda": lam}})
    return ctx, records


def test_prune_keeps_the_registered_and_ensure_rebuilds_bit_for_bit(merged: tuple[StageContext, dict]) -> None:
    ctx, records = merged
    index = write_merge_index(ctx, records)
    on_disk = json.loads((ctx.work / "merged.json").read_text())
    assert on_disk == json.loads(json.dumps(index)) and set(on_disk) == {"ta_l0.5", "ta_l1"}
    assert on_disk["ta_l1"]["weights"] == records["ta_l1"].weights
    assert prune_merged(ctx, records, keep=["ta_l0.5"]) == ["ta_l1"]
    assert (ctx.work / "merged/ta_l0.5/model.safetensors").is_file()
    assert not (ctx.work / "merged/ta_l1").exists()
    ensure_merged(ctx, records["ta_l1"])  # raises if the rebuilt sha256 differ from the recorded ones
    assert (ctx.work / "merged/ta_l1/model.safetensors").is_file()


def test_keep_all_prunes_nothing_and_changed_inputs_are_caught(merged: tuple[StageContext, dict]) -> None:
    ctx, records = merged
    keep_all = load_params(str(DEFAULT), ["tasks=[news,sentiment]", "registry.keep_merged=all"])
    assert prune_merged(replace(ctx, params=keep_all), records, keep=[]) == []
    prune_merged(ctx, records, keep=[])
    finetune(ctx.work / "base", ctx.work / "checkpoints/t0", seed=7)  # an input changed under the record
    with pytest.raises(RuntimeError, match="rebuilt weights differ"):
        ensure_merged(ctx, records["ta_l1"])


def test_a_variant_folder_holding_a_users_file_is_not_pruned(merged: tuple[StageContext, dict]) -> None:
    ctx, records = merged
    said: list[str] = []
    ctx.progress = said.append
    (ctx.work / "merged/ta_l1/notes.txt").write_text("the user's")
    assert prune_merged(ctx, records, keep=[]) == ["ta_l0.5"]
    assert (ctx.work / "merged/ta_l1/notes.txt").is_file() and (ctx.work / "merged/ta_l1/model.safetensors").is_file()
    assert any("not pruning ta_l1: " in line and "holds notes.txt, which mergeline did not write" in line for line in said)
