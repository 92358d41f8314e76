"""Stages ``fine-tune``, ``import-task-model`` (a task given as a checkpoint or an adapter) and ``extract-vector``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeline.stages.common import StageContext, rel, timed


def checkpoint_name(task: str, mode: str) -> str:
    return task if mode == "full" else f"{task}-{mode}"


def autocast_dtype(device: str) -> str:
    """bf16 autocast on a CUDA GPU that supports it (weights stay fp32), else fp32."""
    import torch

    return "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"


def finetune_settings(ctx: StageContext, mode: str) -> dict[str, Any]:
    """The ``finetune:`` params for one fine-tune; a TaLoS (LoRA) fine-tune takes ``talos.lr`` (``lora.lr``)
    when it is set."""
    settings = ctx.params.finetune.model_dump()
    own_lr = {"talos": ctx.params.talos.lr, "lora": ctx.params.lora.lr}.get(mode)
    if own_lr is not None:
        settings["lr"] = own_lr
    return settings


def finetune(ctx: StageContext, task: str, mode: str, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the base on one task, fully (``full``), on a TaLoS mask (``talos``) or as a LoRA adapter (``lora``)."""
    from mergeline.finetune import FinetuneConfig, TalosConfig, finetune_checkpoint
    from mergeline.io.hashing import sha256_dir

    if mode == "lora":
        return _finetune_lora(ctx, task, base, data)

    p = ctx.params
    splits = data["tasks"][task]
    out = ctx.work / "checkpoints" / checkpoint_name(task, mode)
    settings = finetune_settings(ctx, mode)
    cfg = FinetuneConfig(**settings, dtype=autocast_dtype(ctx.device))
    talos = None
    if mode == "talos":
        talos = TalosConfig(keep=p.talos.keep, rounds=p.talos.rounds, max_examples=p.talos.calib_examples,
                            seed=p.finetune.seed)
    ctx.say(f"fine-tune[{mode}]: {task}")
    record: dict[str, Any] = {"task": task, "mode": mode}
    with timed(record):
        meta = finetune_checkpoint(
            ctx.root / base["path"], ctx.root / splits["train"]["path"], out, cfg, talos=talos,
            calib_jsonl=ctx.root / splits["validation"]["path"], device=ctx.device, log=ctx.log, progress=ctx.progress,
        )
    record.update({"path": rel(out, ctx.root), "sha256": sha256_dir(out), "meta": meta,
                   "params": settings | ({"talos": p.talos.model_dump()} if talos else {})})
    return record


def _finetune_lora(ctx: StageContext, task: str, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    from mergeline.finetune import FinetuneConfig
    from mergeline.finetune.lora_train import LoraSettings, finetune_lora_checkpoint
    from mergeline.io.hashing import sha256_dir

    p = ctx.params
    out = ctx.work / "checkpoints" / checkpoint_name(task, "lora")
    settings = finetune_settings(ctx, "lora")
    cfg = FinetuneConfig(**settings, dtype=autocast_dtype(ctx.device))
    lora = LoraSettings(**p.lora.model_dump(exclude={"enabled", "lr"}))
    ctx.say(f"fine-tune[lora]: {task}")
    record: dict[str, Any] = {"task": task, "mode": "lora"}
    with timed(record):
        meta = finetune_lora_checkpoint(ctx.root / base["path"], ctx.root / data["tasks"][task]["train"]["path"], out,
                                        cfg, lora, device=ctx.device, log=ctx.log, progress=ctx.progress)
    record.update({"path": rel(out, ctx.root), "sha256": sha256_dir(out), "meta": meta,
                   "params": settings | {"lora": p.lora.model_dump()}})
    return record


def given_model(ctx: StageContext, task: str) -> Path:
    """The checkpoint or adapter folder a task names (relative paths are under the project root)."""
    entry = ctx.params.task_entry(task)
    return ctx.root / str(entry.checkpoint or entry.adapter)


def import_task_model(ctx: StageContext, task: str, base: dict[str, Any]) -> dict[str, Any]:
    """A task given as a model: a checkpoint is used where it is; an adapter is folded onto the base
    into ``work_dir/checkpoints/<task>`` (the model evaluation loads). Nothing is fine-tuned."""
    from mergeline.io.hashing import sha256_dir
    from mergeline.merge.lora import fold_into_model

    source = ctx.params.task_entry(task).source
    given = given_model(ctx, task)
    ctx.say(f"import-task-model[{source}]: {task} <- {given}")
    given_sha = sha256_dir(given)
    record: dict[str, Any] = {"task": task, "mode": "full", "source": source, "params": {},
                              "input": {"path": rel(given, ctx.root), "sha256": given_sha}}
    with timed(record):
        if source == "adapter":
            out = ctx.work / "checkpoints" / task
            record["meta"] = fold_into_model(ctx.root / base["path"], given, out)
        else:
            out = given
    record.update({"path": rel(out, ctx.root), "sha256": given_sha if out == given else sha256_dir(out)})
    return record


def extract_vector(ctx: StageContext, base: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """τ = θ_ft − θ_base, written as a task-vector folder (safetensors + json with sha256); for a LoRA
    adapter (fine-tuned here or given) τ is its fold, ΔW = s·B·A per target module."""
    from mergeline.finetune import extract_task_vector
    from mergeline.finetune.lora_train import adapter_of
    from mergeline.merge.lora import extract_lora_vector

    name = checkpoint_name(checkpoint["task"], checkpoint["mode"])
    out = ctx.work / "vectors" / name
    ctx.say(f"extract-vector: {name}")
    record: dict[str, Any] = {"task": checkpoint["task"], "mode": checkpoint["mode"]}
    base_dir = ctx.root / base["path"]
    with timed(record):
        if checkpoint["mode"] == "lora":
            meta = extract_lora_vector(base_dir, adapter_of(ctx.root / checkpoint["path"]), out)
        elif checkpoint.get("source") == "adapter":
            meta = extract_lora_vector(base_dir, ctx.root / checkpoint["input"]["path"], out)
        else:
            meta = extract_task_vector(base_dir, ctx.root / checkpoint["path"], out)
    record.update({"path": rel(out, ctx.root), "sha256": meta["sha256"], "meta": meta})
    return record
