"""Stages ``fine-tune``, ``import-task-model`` (a task given as a checkpoint or an adapter) and ``extract-vector``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeline.params import LoraSettings, TalosMask
from mergeline.pipeline.records import BaseRecord, Checkpoint, DataRecord, FileRef, Fit, Vector, checkpoint_name
from mergeline.stages.common import StageContext, rel, timed


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


def finetune(ctx: StageContext, fit: Fit, base: BaseRecord, data: DataRecord) -> Checkpoint:
    """Fine-tune the base on one task, fully (``full``), on a TaLoS mask (``talos``) or as a LoRA adapter (``lora``)."""
    from mergeline.finetune import FinetuneConfig, TalosConfig, finetune_checkpoint
    from mergeline.io.hashing import sha256_dir

    if fit.mode == "lora":
        return _finetune_lora(ctx, fit, base, data)

    p = ctx.params
    out = ctx.work / "checkpoints" / fit.name
    cfg = FinetuneConfig(**finetune_settings(ctx, fit.mode), dtype=autocast_dtype(ctx.device))
    talos = None
    if fit.mode == "talos":
        talos = TalosConfig(**p.talos.model_dump(include=set(TalosMask.model_fields)), seed=p.finetune.seed)
    # what the optimizer and the mask get, as they get it: MLflow's params and the lineage's are these
    used = cfg.model_dump() | ({"talos": talos.model_dump()} if talos else {})
    ctx.used(used)
    ctx.say(f"fine-tune[{fit.mode}]: {fit.task}")
    with timed() as clock:
        meta = finetune_checkpoint(
            ctx.root / base.path, ctx.root / data.split(fit.task, "train").path, out, cfg, talos=talos,
            calib_jsonl=ctx.root / data.split(fit.task, "validation").path, device=ctx.device, log=ctx.log,
            progress=ctx.progress,
        )
    return Checkpoint(task=fit.task, mode=fit.mode, path=rel(out, ctx.root), sha256=sha256_dir(out), meta=meta,
                      params=used, seconds=clock.seconds)


def _finetune_lora(ctx: StageContext, fit: Fit, base: BaseRecord, data: DataRecord) -> Checkpoint:
    from mergeline.finetune import FinetuneConfig
    from mergeline.finetune.lora_train import finetune_lora_checkpoint
    from mergeline.io.hashing import sha256_dir

    out = ctx.work / "checkpoints" / fit.name
    cfg = FinetuneConfig(**finetune_settings(ctx, "lora"), dtype=autocast_dtype(ctx.device))
    lora = LoraSettings(**ctx.params.lora.model_dump(include=set(LoraSettings.model_fields)))
    used = cfg.model_dump() | {"lora": lora.model_dump()}
    ctx.used(used)
    ctx.say(f"fine-tune[lora]: {fit.task}")
    with timed() as clock:
        meta = finetune_lora_checkpoint(ctx.root / base.path, ctx.root / data.split(fit.task, "train").path, out,
                                        cfg, lora, device=ctx.device, log=ctx.log, progress=ctx.progress)
    return Checkpoint(task=fit.task, mode="lora", path=rel(out, ctx.root), sha256=sha256_dir(out), meta=meta,
                      params=used, seconds=clock.seconds)


def given_model(ctx: StageContext, task: str) -> Path:
    """The checkpoint or adapter folder a task names (relative paths are under the project root)."""
    entry = ctx.params.task_entry(task)
    return ctx.root / str(entry.checkpoint or entry.adapter)


def import_task_model(ctx: StageContext, task: str, base: BaseRecord, given_sha256: str) -> Checkpoint:
    """A task given as a model: a checkpoint is used where it is; an adapter is folded onto the base
    into ``work_dir/checkpoints/<task>`` (the model evaluation loads). Nothing is fine-tuned.

    ``given_sha256`` is the given folder's content hash, read before the call: it keys a cache on the
    folder's content (an edited model is imported again), and it must still match when the call runs.
    """
    from mergeline.errors import MergelineError
    from mergeline.io.hashing import sha256_dir
    from mergeline.merge.lora import fold_into_model

    source = ctx.params.task_entry(task).source
    given = given_model(ctx, task)
    ctx.used({"task": task, "source": source, "given": rel(given, ctx.root)})
    ctx.say(f"import-task-model[{source}]: {task} <- {given}")
    with timed() as clock:
        if sha256_dir(given) != given_sha256:
            raise MergelineError(f"{given}: changed while the pipeline ran (task '{task}'); run it again")
        meta: dict[str, Any] = {}
        if source == "adapter":
            out = ctx.work / "checkpoints" / task
            meta = fold_into_model(ctx.root / base.path, given, out)
        else:
            out = given
    return Checkpoint(task=task, mode="full", source=source, path=rel(out, ctx.root), meta=meta,
                      sha256=given_sha256 if out == given else sha256_dir(out),
                      given=FileRef(path=rel(given, ctx.root), sha256=given_sha256), seconds=clock.seconds)


def extract_vector(ctx: StageContext, base: BaseRecord, checkpoint: Checkpoint) -> Vector:
    """τ = θ_ft − θ_base, written as a task-vector folder (safetensors + json with sha256); for a LoRA
    adapter (fine-tuned here or given) τ is its fold, ΔW = s·B·A per target module."""
    from mergeline.finetune import extract_task_vector
    from mergeline.finetune.lora_train import adapter_of
    from mergeline.merge.lora import extract_lora_vector

    name = checkpoint_name(checkpoint.task, checkpoint.mode)
    out = ctx.work / "vectors" / name
    ctx.used({"task": checkpoint.task, "mode": checkpoint.mode})
    ctx.say(f"extract-vector: {name}")
    base_dir = ctx.root / base.path
    with timed() as clock:
        if checkpoint.mode == "lora":
            meta = extract_lora_vector(base_dir, adapter_of(ctx.root / checkpoint.path), out)
        elif checkpoint.source == "adapter" and checkpoint.given is not None:
            meta = extract_lora_vector(base_dir, ctx.root / checkpoint.given.path, out)
        else:
            meta = extract_task_vector(base_dir, ctx.root / checkpoint.path, out)
    return Vector(task=checkpoint.task, mode=checkpoint.mode, path=rel(out, ctx.root), sha256=meta["sha256"],
                  meta=meta, seconds=clock.seconds)
