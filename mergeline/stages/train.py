"""Stages ``fine-tune`` and ``extract-vector``."""

from __future__ import annotations

from typing import Any

from mergeline.stages.common import StageContext, rel, timed


def checkpoint_name(task: str, mode: str) -> str:
    return task if mode == "full" else f"{task}-{mode}"


def autocast_dtype(device: str) -> str:
    """bf16 autocast on a CUDA GPU that supports it (weights stay fp32), else fp32."""
    import torch

    return "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"


def finetune_settings(ctx: StageContext, mode: str) -> dict[str, Any]:
    """The ``finetune:`` params for one fine-tune; a TaLoS fine-tune takes ``talos.lr`` when it is set."""
    settings = ctx.params.finetune.model_dump()
    if mode == "talos" and ctx.params.talos.lr is not None:
        settings["lr"] = ctx.params.talos.lr
    return settings


def finetune(ctx: StageContext, task: str, mode: str, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the base on one task, fully (``full``) or on a TaLoS mask (``talos``)."""
    from mergeline.finetune import FinetuneConfig, TalosConfig, finetune_checkpoint
    from mergeline.io.hashing import sha256_dir

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


def extract_vector(ctx: StageContext, base: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """τ = θ_ft − θ_base, written as a task-vector folder (safetensors + json with sha256)."""
    from mergeline.finetune import extract_task_vector

    name = checkpoint_name(checkpoint["task"], checkpoint["mode"])
    out = ctx.work / "vectors" / name
    ctx.say(f"extract-vector: {name}")
    record: dict[str, Any] = {"task": checkpoint["task"], "mode": checkpoint["mode"]}
    with timed(record):
        meta = extract_task_vector(ctx.root / base["path"], ctx.root / checkpoint["path"], out)
    record.update({"path": rel(out, ctx.root), "sha256": meta["sha256"], "meta": meta})
    return record
