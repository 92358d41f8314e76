"""Stage-level fine-tuning and task-vector extraction: folders in, folders out.

``finetune_checkpoint``: base model folder + task JSONL -> fine-tuned Hugging Face folder (safetensors,
tokenizer, ``finetune.json`` without timings, so equal inputs give byte-equal folders; with TaLoS
also ``talos_mask.safetensors``), written atomically.

``extract_task_vector``: τ = θ_ft − θ_base (Ilharco et al., arXiv 2212.04089) for every float
tensor, streamed tensor by tensor into ``task_vector.safetensors`` (float32) + ``task_vector.json``
``{"kind": "task_vector", "base_sha256", "finetuned_sha256", "sha256"}``: the two model hashes are
``mergeline.io.hashing.sha256_path`` of the model folders, ``sha256`` is that of the vector file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from mergeline.assets import MODEL_LOAD_LOCK
from mergeline.errors import MergelineError
from mergeline.finetune.batching import read_records
from mergeline.finetune.full import FinetuneConfig, LogFn, ProgressFn, finetune
from mergeline.finetune.talos import mask_density, talos_mask
from mergeline.finetune.weights import TASK_VECTOR_FILE, TensorReader, is_float_code, save_tensors, write_streaming
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_file, sha256_path
from mergeline.params import TalosMask

MASK_FILE = "talos_mask.safetensors"
META_FILE = "finetune.json"


class TalosConfig(TalosMask):
    """The ``talos:`` mask params (:class:`~mergeline.params.TalosMask`, one schema) plus how the mask is
    computed; fine-tuning settings stay in :class:`FinetuneConfig`."""

    seed: int = Field(0, description="seed of the sampled choices")
    masked_scale: float = Field(0.1, ge=0, le=1, description="forward-pass factor of masked entries during calibration")
    per_sample: Literal["vmap", "loop"] = Field("vmap", description="per-example gradients batched (vmap) or one by one")
    chunk_size: int = Field(4, ge=1, description="examples per vmap call (memory: one gradient copy each)")
    final_norm: bool = Field(True, description="the final norm is prunable (trainable), as in the authors' code")


def offline_env() -> None:
    """Forbid hub access for transformers/datasets in this process (the code sets it, not the user)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def load_causal_lm(model_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load a Hugging Face causal LM folder in float32 plus its tokenizer; bad folder -> MergelineError."""
    offline_env()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise MergelineError(f"{path}: not a model folder (no config.json)")
    try:
        with MODEL_LOAD_LOCK:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise MergelineError(f"{path}: model does not load ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return model.to(device), tokenizer


def finetune_checkpoint(
    base_dir: str | os.PathLike[str],
    train_jsonl: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: FinetuneConfig,
    talos: TalosConfig | None = None,
    calib_jsonl: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    log: LogFn | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_dir`` on ``train_jsonl`` and save the result to ``out_dir`` atomically.

    With ``talos``, the mask is computed on the *pretrained* model from ``calib_jsonl`` (the task's
    validation split; the training file when None), saved as ``talos_mask.safetensors``, and only it
    is trained. Returns the metadata also written to ``finetune.json``: losses, timings, density.
    """
    records = read_records(train_jsonl)
    calib = read_records(calib_jsonl or train_jsonl, limit=talos.calib_examples) if talos else None
    model, tokenizer = load_causal_lm(base_dir, device)
    torch.manual_seed(cfg.seed)
    meta: dict[str, Any] = {
        "base_dir": str(base_dir),
        "train_jsonl": str(train_jsonl),
        "train_records": len(records),
        "finetune": cfg.model_dump(),
        "talos": talos.model_dump() if talos else None,
    }
    mask = None
    if talos and calib:
        t0 = time.perf_counter()
        mask = talos_mask(
            model, tokenizer, calib, talos.keep, talos.rounds, talos.seed, cfg.max_length, talos.masked_scale,
            talos.per_sample, talos.chunk_size, cfg.delimiter, log=log, progress=progress, final_norm=talos.final_norm,
        )  # fmt: skip
        meta.update(
            calib_jsonl=str(calib_jsonl or train_jsonl),
            calib_records=len(calib),
            talos_seconds=time.perf_counter() - t0,
            mask_density=mask_density(mask),
        )
    meta.update(finetune(model, tokenizer, records, cfg, mask=mask, log=log, progress=progress))
    t0 = time.perf_counter()
    with atomic_dir(out_dir, kind="checkpoint") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if mask is not None:
            save_tensors(mask, tmp / MASK_FILE)
        # Timings stay out of the folder: its content hash must depend on inputs only.
        stable = {k: v for k, v in meta.items() if not k.endswith("seconds") and k != "seconds_per_step"}
        (tmp / META_FILE).write_text(json.dumps(stable, indent=1))
    meta["save_seconds"] = time.perf_counter() - t0
    return meta


def extract_task_vector(
    base_dir: str | os.PathLike[str], finetuned_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write τ = θ_ft − θ_base for every float tensor to ``out_dir``; returns ``task_vector.json``'s content.

    Both models must hold the same float tensors with the same shapes (else MergelineError naming
    the tensor). Integer tensors are skipped. Memory: one pair of tensors at a time.
    """
    with TensorReader(base_dir) as base, TensorReader(finetuned_dir) as tuned:
        base_names = {n for n in base.keys() if is_float_code(base.dtype_code(n))}
        tuned_names = {n for n in tuned.keys() if is_float_code(tuned.dtype_code(n))}
        for name in sorted(tuned_names ^ base_names):
            where, other = (finetuned_dir, base_dir) if name in tuned_names else (base_dir, finetuned_dir)
            raise MergelineError(f"tensor {name}: in {where} but not in {other}")
        specs = []
        for name in sorted(tuned_names):
            if base.shape(name) != tuned.shape(name):
                raise MergelineError(
                    f"tensor {name}: shape {tuple(tuned.shape(name))} in {finetuned_dir} != {tuple(base.shape(name))} in {base_dir}"
                )
            specs.append((name, base.shape(name), torch.float32))

        def delta(name: str) -> torch.Tensor:
            return tuned.get(name).float() - base.get(name).float()

        with atomic_dir(out_dir, kind="task-vector") as tmp:
            write_streaming(tmp / TASK_VECTOR_FILE, specs, delta)
            info = {
                "kind": "task_vector",
                "base_sha256": sha256_path(base_dir),
                "finetuned_sha256": sha256_path(finetuned_dir),
                "sha256": sha256_file(tmp / TASK_VECTOR_FILE),
                "tensors": len(specs),
                "numel": sum(torch.Size(s).numel() for _, s, _ in specs),
            }
            (tmp / "task_vector.json").write_text(json.dumps(info, indent=1))
    return info
