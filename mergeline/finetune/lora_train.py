"""LoRA fine-tuning through PEFT (Hu et al., arXiv 2106.09685): only the low-rank matrices train.

``finetune_lora_checkpoint``: base model folder + task JSONL -> a folder holding the base with the
adapter merged in (a plain Hugging Face model, what evaluation loads) and the adapter itself under
``adapter/`` (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, the input of the task
vector: :func:`mergeline.merge.lora.extract_lora_vector` folds it). The adapter lives in a subfolder
because transformers treats a model folder with an ``adapter_config.json`` as an adapter to load.

The training loop is :func:`mergeline.finetune.full.finetune` with an all-ones mask over the LoRA
matrices (so only they train, under the same optimiser, schedule and loss as the full fine-tune).
Seeded: the LoRA initialisation draws from ``cfg.seed``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mergeline.errors import MergelineError
from mergeline.finetune.batching import read_records
from mergeline.assets import MODEL_LOAD_LOCK
from mergeline.finetune.checkpoint import META_FILE, load_causal_lm
from mergeline.finetune.full import FinetuneConfig, LogFn, ProgressFn, finetune
from mergeline.io.atomic import atomic_dir
from mergeline.params import LoraSettings

ADAPTER_DIR = "adapter"


def finetune_lora_checkpoint(
    base_dir: str | os.PathLike[str],
    train_jsonl: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: FinetuneConfig,
    lora: LoraSettings,
    device: str = "cpu",
    log: LogFn | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter of ``base_dir`` on ``train_jsonl``; write merged model + ``adapter/`` atomically."""
    with MODEL_LOAD_LOCK:
        from peft import LoraConfig, get_peft_model
    records = read_records(train_jsonl)
    model, tokenizer = load_causal_lm(base_dir, device)
    torch.manual_seed(cfg.seed)
    try:
        peft_model = get_peft_model(model, LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules), lora_dropout=lora.dropout))
    except ValueError as exc:  # PEFT: a target module the model does not have
        raise MergelineError(f"lora.target_modules {lora.target_modules}: {str(exc).splitlines()[0]}") from None
    mask = {name: torch.ones_like(p, dtype=torch.bool) for name, p in peft_model.named_parameters() if "lora_" in name}
    meta: dict[str, Any] = {"base_dir": str(base_dir), "train_jsonl": str(train_jsonl), "train_records": len(records),
                            "finetune": cfg.model_dump(), "lora": lora.model_dump()}
    meta.update(finetune(peft_model, tokenizer, records, cfg, mask=mask, log=log, progress=progress))
    with atomic_dir(out_dir, kind="checkpoint") as tmp:
        peft_model.save_pretrained(str(tmp / ADAPTER_DIR))
        # The folded copy is for evaluation; the task vector comes from the adapter.
        peft_model.merge_and_unload().save_pretrained(str(tmp))
        tokenizer.save_pretrained(tmp)
        stable = {k: v for k, v in meta.items() if not k.endswith("seconds") and k != "seconds_per_step"}
        (tmp / META_FILE).write_text(json.dumps(stable, indent=1))
    return meta


def adapter_of(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """The adapter folder inside a LoRA fine-tune's output."""
    return Path(checkpoint_dir) / ADAPTER_DIR
