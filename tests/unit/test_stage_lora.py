"""The LoRA fine-tune stage (PEFT) and the ``lora`` merge method's wiring, without a Prefect flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.params import load_params
from mergeline.pipeline.records import BaseRecord, DataRecord, FileRef, Fit, Vector
from mergeline.stages.common import StageContext
from mergeline.stages.merge import merge_config, plan_variants
from mergeline.stages.train import extract_vector, finetune
from tests.lm_fixtures import build_tiny_llama, write_tiny_tasks
from tests.merge_fixtures import load_tensors

REPO = Path(__file__).resolve().parents[2]


def _params(*overrides: str):  # type: ignore[no-untyped-def]
    return load_params(REPO / "params" / "tiny.yaml", [
        "tasks=[news,sentiment]", "talos.enabled=false", "merge.methods={task_arithmetic: {}, lora: {}}",
        "finetune.steps=2", "finetune.max_length=32",
        "lora.enabled=true", "lora.rank=2", "lora.alpha=4", "lora.target_modules=[q_proj,v_proj]", "lora.lr=0.01",
        *overrides])


def test_lora_finetune_saves_adapter_and_vector_is_its_fold(tmp_path: Path) -> None:
    base = build_tiny_llama(tmp_path / "base")
    tasks = write_tiny_tasks(tmp_path / "tasks", tasks=("alpha",))
    ctx = StageContext(_params(), root=tmp_path)
    data = DataRecord(tasks={"alpha": {s: FileRef(path=str(tasks["alpha"] / f"{s}.jsonl"), sha256="")
                                       for s in ("train", "validation")}}, sources={}, kinds={})
    base_record = BaseRecord(id="tiny", path=str(base), sha256="")
    checkpoint = finetune(ctx, Fit("alpha", "lora"), base_record, data)
    assert checkpoint.mode == "lora" and checkpoint.params["lr"] == 0.01
    assert checkpoint.params["lora"]["rank"] == 2 and len(checkpoint.meta["losses"]) == 2
    folder = tmp_path / checkpoint.path
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "model.safetensors").is_file()
    vector = extract_vector(ctx, base_record, checkpoint)
    tau, theta, theta0 = load_tensors(tmp_path / vector.path), load_tensors(folder), load_tensors(base)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert tau[q].abs().sum() > 0 and tau["model.layers.0.mlp.up_proj.weight"].abs().sum() == 0
    # the saved model is PEFT's merge of the adapter; the vector is the adapter's fold
    assert torch.equal(theta0[q] + tau[q], theta[q])


def test_lora_method_merges_lora_vectors() -> None:
    ctx = StageContext(_params("merge.methods={task_arithmetic: {lambdas: [1.0]}, lora: {lambdas: [0.5]}}"))
    variants = {v.name: v for v in plan_variants(ctx)}
    assert set(variants) == {"ta_l1", "lora_l0.5"}
    vectors = {Fit(t, m): Vector(task=t, mode=m, path=f"vectors/{t}-{m}", sha256="")
               for t in ("news", "sentiment") for m in ("full", "lora")}
    config = merge_config(ctx, variants["lora_l0.5"], BaseRecord(id="b", path="base", sha256=""), vectors, {})
    assert config["merge_method"] == "task_arithmetic" and config["parameters"]["lambda"] == 0.5
    assert [m["model"] for m in config["models"]] == ["vectors/news-lora", "vectors/sentiment-lora"]


def test_lora_method_needs_lora_enabled() -> None:
    with pytest.raises(MergelineError, match="merge.methods.lora needs lora.enabled: true"):
        _params("lora.enabled=false", "merge.methods={lora: {}}")
