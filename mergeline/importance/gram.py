"""RegMean's statistics: the Gram matrix of every linear layer's inputs under a fine-tuned model.

RegMean (Jin et al., arXiv 2212.09849) merges each linear layer y = x Wᵀ in closed form from
G = Xᵀ X, X the layer's inputs (one row per token) when model t reads task t's examples. As in the
authors' code, forward hooks on every ``nn.Linear`` of the fine-tuned model record its inputs over the
calibration examples; here each input batch is added to a float64 running sum at once, so memory is one
d_in × d_in matrix per layer, never the activations. Padding positions are left out (batches are
right-padded; causal attention makes the real tokens' inputs independent of the padding).

The saved matrix is (1/N) Σ_x X_xᵀ X_x over the N examples (tokens of an example summed, examples
averaged), so tasks with different numbers of examples weigh alike; it is keyed by the layer's weight
tensor name, which the merge method looks it up by. A linear layer that shares its weight with the input
embedding (a tied LM head) gets none: that tensor is not stored and is merged as an embedding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from mergeline.errors import MergelineError
from mergeline.finetune.batching import Encoded, collate, encode_records, pad_id, read_records
from mergeline.finetune.checkpoint import load_causal_lm

ProgressFn = Callable[[str], None]


class GramConfig(BaseModel):
    """Which examples feed the Gram matrices and how they are read (the pipeline passes its fine-tune's)."""

    model_config = ConfigDict(extra="forbid")

    calib_examples: int | None = Field(16, ge=1, description="calibration records read (the first N; null: all)")
    batch_size: int = Field(8, ge=1, description="records per forward pass")
    max_length: int = Field(48, ge=2, description="tokens per record (prompt cut from the left)")
    delimiter: str = Field("", description="text between prompt and answer, as in fine-tuning")


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every ``nn.Linear`` by its weight's parameter name, leaving out one tied to the input embedding.

    GPT-2's ``Conv1D`` layers (weights stored (in, out)) are refused: the merge reads every weight as
    (out, in), and averaging them instead would pass for RegMean."""
    conv = [name for name, module in model.named_modules() if type(module).__name__ == "Conv1D"]
    if conv:
        raise MergelineError(f"RegMean Gram matrices: {conv[0]!r} is a Conv1D layer (GPT-2 style, weight (in, out)); "
                             "only nn.Linear layers are supported")
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embedding.weight if embedding is not None else None
    return {f"{name}.weight": module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.weight is not tied}


def _token_mask(items: Sequence[Encoded], width: int) -> torch.Tensor:
    lengths = torch.tensor([len(it.input_ids) for it in items])
    return torch.arange(width)[None, :] < lengths[:, None]


def collect_grams(model: torch.nn.Module, tokenizer: Any, records: Sequence[dict[str, Any]], cfg: GramConfig,
                  progress: ProgressFn | None = None) -> dict[str, torch.Tensor]:
    """(1/N) Σ_x X_xᵀ X_x per linear layer (weight name -> float32 CPU tensor, d_in × d_in)."""
    encoded = encode_records(tokenizer, records, cfg.max_length, cfg.delimiter)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    layers = linear_layers(model)
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=device)
            for name, m in layers.items()}
    mask: list[torch.Tensor] = []  # the current batch's real-token mask, read by the hooks

    def hook_for(name: str) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = args[0].detach()
            x = x[mask[0]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])
            x = x.to(torch.float64)
            sums[name].addmm_(x.T, x)
        return record

    handles = [m.register_forward_hook(hook_for(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), cfg.batch_size):
                items = encoded[start:start + cfg.batch_size]
                batch = collate(items, pad)
                mask[:] = [_token_mask(items, batch["input_ids"].shape[1]).to(device)]
                model(input_ids=batch["input_ids"].to(device))
                if progress:
                    progress(f"gram: {min(start + cfg.batch_size, len(encoded))}/{len(encoded)} records")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: (total / len(encoded)).float().cpu() for name, total in sums.items()}


def gram_matrices(finetuned_dir: str | os.PathLike[str], calib_jsonl: str | os.PathLike[str],
                  cfg: GramConfig | None = None, device: str = "cpu",
                  progress: ProgressFn | None = None) -> dict[str, torch.Tensor]:
    """The Gram matrices of the fine-tuned model's linear layers over the first calibration records."""
    cfg = cfg or GramConfig()
    records = read_records(calib_jsonl, limit=cfg.calib_examples)
    model, tokenizer = load_causal_lm(finetuned_dir, device)
    return collect_grams(model, tokenizer, records, cfg, progress)
