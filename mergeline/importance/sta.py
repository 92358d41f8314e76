"""STA first-order (Taylor) importance of a task vector's entries.

STA: "Beyond Task Vectors: Selective Task Arithmetic Based on Importance Metrics" (Tian et al.,
arXiv 2411.16139). Removing entry j of τ_t = θ_t − θ_0 changes the task loss by about
``L_t(θ_t − τ_j e_j) − L_t(θ_t) ≈ −g_j τ_j``, hence (METHODS.md §3, inferred reading)

    I_j = | g_j · τ_j |,   g = (1/N) Σ_x ∇_θ ℓ(x; θ_t)    over a labelled calibration set,

with ℓ(x) the mean answer-token NLL of record x. Options: ``importance_of="weight"`` scores
``|g_j · θ_j|`` (LLM-Pruner style, θ at the point where g is taken), ``grad_at="pretrained"`` takes g
at θ_0. Normalisation and selection belong to the merge method, not here.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.finetune.batching import answer_nll, collate, encode_records, pad_id, read_records
from mergeline.finetune.checkpoint import load_causal_lm
from mergeline.finetune.weights import TensorReader, load_tensors, save_tensors
from mergeline.params import ImportanceParams

LogFn = Callable[[str, float, "int | None"], None]
ProgressFn = Callable[[str], None]


class StaImportanceConfig(ImportanceParams):
    """The ``importance:`` params (:class:`~mergeline.params.ImportanceParams`, one schema) plus how records
    are read (the pipeline passes its fine-tune's batch size and length)."""

    batch_size: int = Field(8, ge=1, description="records per forward/backward pass")
    max_length: int = Field(48, ge=2, description="tokens per record (prompt cut from the left)")
    delimiter: str = Field("", description="text between prompt and answer, as in fine-tuning")
    exclude: list[str] = Field(default_factory=list, description="regexes of tensor names not scored")


def mean_gradient(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 8,
    max_length: int = 48,
    delimiter: str = "",
    progress: ProgressFn | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """(1/N) Σ_x ∇ℓ(x) for every parameter (name -> float32 CPU tensor), and the mean loss."""
    encoded = encode_records(tokenizer, records, max_length, delimiter)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the gradient is a deterministic function of the weights
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad_(True)
        param.grad = None
    total = 0.0
    try:
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], pad)
            logits = model(input_ids=batch["input_ids"].to(device)).logits
            # Summed per-example losses over N: the accumulated .grad is the mean over examples.
            loss = answer_nll(logits, batch["labels"].to(device)).sum() / len(encoded)
            loss.backward()
            total += float(loss.detach())
            if progress:
                progress(f"importance: gradient over {min(start + batch_size, len(encoded))}/{len(encoded)} records")
        grads = {n: (p.grad.detach().float().cpu() if p.grad is not None else torch.zeros(p.shape)) for n, p in model.named_parameters()}
    finally:
        model.train(was_training)
        for name, param in model.named_parameters():
            param.grad = None
            param.requires_grad_(flags[name])
    return grads, total


def sta_importance(
    finetuned_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    calib_jsonl: str | os.PathLike[str],
    cfg: StaImportanceConfig | None = None,
    device: str = "cpu",
    log: LogFn | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """Element-wise STA importance (float32, on CPU) of every float parameter not excluded."""
    cfg = cfg or StaImportanceConfig()
    records = read_records(calib_jsonl, limit=cfg.calib_examples)
    excluded = [re.compile(p) for p in cfg.exclude]
    grad_dir = finetuned_dir if cfg.grad_at == "finetuned" else base_dir
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(grad_dir, device)
    grads, loss = mean_gradient(model, tokenizer, records, cfg.batch_size, cfg.max_length, cfg.delimiter, progress)
    del model
    if log:
        log("importance/calib_loss", loss, None)
    scores: dict[str, torch.Tensor] = {}
    with TensorReader(finetuned_dir) as tuned, TensorReader(base_dir) as base:
        for name, g in grads.items():
            if any(p.search(name) for p in excluded) or not g.is_floating_point():
                continue
            for reader, where in ((tuned, finetuned_dir), (base, base_dir)):
                if name not in reader.files:
                    raise MergelineError(f"tensor {name}: parameter of the model but not in the weights of {where}")
            if cfg.importance_of == "task_vector":
                other = tuned.get(name).float() - base.get(name).float()
            else:
                other = (tuned if cfg.grad_at == "finetuned" else base).get(name).float()
            if other.shape != g.shape:
                raise MergelineError(f"tensor {name}: shape {tuple(other.shape)} on disk != parameter {tuple(g.shape)}")
            scores[name] = (g * other).abs()
    if not scores:
        raise MergelineError(f"importance.exclude={cfg.exclude}: every tensor is excluded")
    if log:
        log("importance/seconds", time.perf_counter() - t0, None)
    return scores


def save_importance(scores: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write importance scores to a safetensors file atomically (e.g. ``<dir>/sta.safetensors``)."""
    return save_tensors({n: t.float() for n, t in scores.items()}, path)


def load_importance(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read importance scores written by :func:`save_importance`."""
    return load_tensors(path)
