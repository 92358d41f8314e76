"""Supervised fine-tuning of a causal LM on task records, dense or restricted to a 0/1 mask.

Loss: mean over the batch of each example's mean answer-token NLL (``batching.answer_nll``).
Optimiser: AdamW (Loshchilov & Hutter, arXiv 1711.05101), linear warm-up then cosine decay to 0,
global gradient-norm clipping. With a mask (TaLoS, arXiv 2504.02620) the optimiser is
:class:`~mergeline.finetune.talos.MaskedAdamW` and only masked-in entries ever change.

Seeded and deterministic on CPU: the same config, data and initial weights give bit-identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.params import FinetuneParams
from mergeline.finetune.batching import batch_loss, collate, encode_records, pad_id, shuffled_batches
from mergeline.finetune.talos import MaskedAdamW

LogFn = Callable[[str, float, "int | None"], None]
ProgressFn = Callable[[str], None]


class FinetuneConfig(FinetuneParams):
    """The ``finetune:`` params (:class:`~mergeline.params.FinetuneParams`, the one schema of these
    quantities and their defaults) plus what the caller sets, not the user: compute dtype, prompt delimiter."""

    dtype: Literal["float32", "bfloat16"] = Field("float32", description="autocast compute dtype (weights stay fp32)")
    delimiter: str = Field("", description="text between prompt and answer; must match lm-eval target_delimiter")


def lr_factor(step: int, cfg: FinetuneConfig) -> float:
    """Multiplier of ``cfg.lr`` at 0-based ``step``: linear warm-up, then constant or cosine to 0."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup) / span))


def embedding_params(model: torch.nn.Module) -> set[int]:
    """ids of the input-embedding and output-embedding (LM head) parameters (one id when tied)."""
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            ids.update(id(p) for p in module.parameters())
    return ids


def _select_trainable(
    model: torch.nn.Module, cfg: FinetuneConfig, mask: Mapping[str, torch.Tensor] | None
) -> list[tuple[str, torch.nn.Parameter]]:
    frozen = embedding_params(model) if cfg.freeze_embeddings else set()
    chosen = []
    for name, param in model.named_parameters():
        if mask is not None:
            # With a mask, what is not in it (or is all zero) is frozen: TaLoS trains only the mask.
            keep = name in mask and bool(mask[name].any())
        else:
            keep = id(param) not in frozen
        if keep:
            chosen.append((name, param))
    if mask is not None:
        unknown = sorted(set(mask) - {n for n, _ in model.named_parameters()})
        if unknown:
            raise MergelineError(f"mask tensor {unknown[0]}: not a parameter of the model")
        for name, param in chosen:
            if tuple(mask[name].shape) != tuple(param.shape):
                raise MergelineError(f"mask tensor {name}: shape {tuple(mask[name].shape)} != parameter {tuple(param.shape)}")
    if not chosen:
        raise MergelineError("finetune: no trainable parameters (mask empty or everything frozen)")
    return chosen


def finetune(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    cfg: FinetuneConfig,
    mask: Mapping[str, torch.Tensor] | None = None,
    log: LogFn | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``records`` (answer-only loss) for ``cfg.steps`` steps.

    ``mask`` (parameter name -> bool tensor): train only True entries with masked AdamW; parameters
    absent from ``mask`` stay frozen. Returns ``{"losses", "seconds", "seconds_per_step", "steps",
    "trainable_entries"}``. Logs ``train/loss`` and ``train/lr`` per step.
    """
    if not records:
        raise MergelineError("finetune: no training records")
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    encoded = encode_records(tokenizer, records, cfg.max_length, cfg.delimiter)
    pad = pad_id(tokenizer)
    trainable = _select_trainable(model, cfg, mask)
    saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    chosen_ids = {id(p) for _, p in trainable}
    for _, param in model.named_parameters():
        param.requires_grad_(id(param) in chosen_ids)
    params = [p for _, p in trainable]
    if mask is None:
        optim: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        entries = sum(p.numel() for p in params)
    else:
        optim = MaskedAdamW(trainable, mask, lr=cfg.lr, weight_decay=cfg.weight_decay)
        entries = sum(int(mask[n].sum()) for n, _ in trainable)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, cfg))
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()
    )
    losses: list[float] = []
    was_training = model.training
    model.train()
    start = time.perf_counter()
    try:
        for step, idx in enumerate(shuffled_batches(len(encoded), cfg.batch_size, cfg.steps, cfg.seed)):
            t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad).items()}
            with autocast:
                loss = batch_loss(model, batch)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr_now = optim.param_groups[0]["lr"]
            optim.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log:
                log("train/loss", losses[-1], step)
                log("train/lr", lr_now, step)
            if progress:
                progress(f"fine-tune step {step + 1}/{cfg.steps} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.1f}s)")
    finally:
        model.train(was_training)
        for name, param in model.named_parameters():
            param.requires_grad_(saved_flags[name])
    seconds = time.perf_counter() - start
    return {
        "losses": losses,
        "seconds": seconds,
        "seconds_per_step": seconds / cfg.steps,
        "steps": cfg.steps,
        "trainable_entries": entries,
    }
