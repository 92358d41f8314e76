"""RegMean's statistics: the Gram matrix of every linear layer's inputs under a fine-tuned model.

RegMean (Jin et al., arXiv 2212.09849) merges each linear layer y = x Wᵀ in closed form from
G = Xᵀ X, X the layer's inputs (one row per token) when model t reads task t's examples. As in the
authors' code, forward hooks on every ``nn.Linear`` of the fine-tuned model record its inputs over the
calibration examples; here each input batch is added to a float64 running sum at once, so memory is one
d_in × d_in matrix per distinct input, never the activations. Padding positions are left out (batches are
right-padded; causal attention makes the real tokens' inputs independent of the padding).

The saved matrix is (1/N) Σ_x X_xᵀ X_x over the N examples (tokens of an example summed, examples
averaged), so tasks with different numbers of examples weigh alike; it is keyed by the layer's weight
tensor name, which the merge method looks it up by. A linear layer that shares its weight with the input
embedding (a tied LM head) gets none: that tensor is not stored and is merged as an embedding.

Layers that read the very same input tensor (Llama's q/k/v projections, its gate and up projections)
have the same matrix: it is computed and stored once, under the first such layer's weight name, and the
others are recorded as aliases in the file's header (``mergeline.io.tensor_aliases``), which the merge
resolves, so every weight name still finds its matrix. Sharing is found by the identity of the input
tensor object within a forward pass, never by names: planned in the first batch, and checked on every
later call (same object as the owner's latest input, not changed in place); a layer whose input ever
differs is collected again on its own. A file without aliases (every matrix stored) reads the same way.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from mergeline.errors import MergelineError
from mergeline.finetune.batching import Encoded, collate, encode_records, pad_id, read_records
from mergeline.finetune.checkpoint import load_causal_lm
from mergeline.finetune.weights import load_tensors, save_tensors
from mergeline.io.safetensors_io import CheckpointReader
from mergeline.io.tensor_aliases import aliases_metadata, reader_aliases

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


@dataclass
class Grams:
    """Gram matrices stored once per distinct layer input: ``matrices`` by the weight name of the first
    layer that read the input, ``aliases`` the other layers' weight names → that stored name."""

    matrices: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def expanded(self) -> dict[str, torch.Tensor]:
        """Every linear weight's matrix by its own name (layers that share an input share one tensor)."""
        return {**self.matrices, **{alias: self.matrices[stored] for alias, stored in self.aliases.items()}}


class _Split(Exception):
    """A layer planned as sharing another's input read a different one: collect again without that alias."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Sharing:
    """Which layer reads the same input tensor object as an earlier one, found in the first batch and
    checked in every later one (and on every call): the plan's alias must get its owner's latest input.

    Inputs are remembered by weak reference with their in-place version counter, so a freed tensor whose
    id() is reused, or an input changed in place between two layers, never counts as shared."""

    def __init__(self, split: set[str]) -> None:
        self.split = split  # layers that must own their matrix
        self.owner: dict[str, str] = {}  # alias -> the layer whose matrix it shares
        self.decided: set[str] = set()
        self.by_id: dict[int, tuple[weakref.ref[torch.Tensor], int, str]] = {}  # first batch: input id -> layer
        self.latest: dict[str, tuple[weakref.ref[torch.Tensor], int]] = {}  # this batch: layer -> its input

    def is_alias(self, name: str, x: torch.Tensor) -> bool:
        """Whether ``name``'s call on ``x`` adds nothing of its own (its owner already added ``x``)."""
        if name not in self.decided:  # its first call
            self.decided.add(name)
            seen = self.by_id.get(id(x))
            if seen is not None and seen[0]() is x and seen[1] == x._version and name not in self.split:
                self.owner[name] = seen[2]
            else:
                self.by_id[id(x)] = (weakref.ref(x), x._version, name)
        if name in self.owner:
            ref, version = self.latest.get(self.owner[name], (None, -1))
            if ref is None or ref() is not x or version != x._version:
                raise _Split(name)
            return True
        self.latest[name] = (weakref.ref(x), x._version)
        return False

    def next_batch(self) -> None:
        self.by_id.clear()  # sharing is planned in the first batch only
        self.latest.clear()


def collect_grams(model: torch.nn.Module, tokenizer: Any, records: Sequence[dict[str, Any]], cfg: GramConfig,
                  progress: ProgressFn | None = None, share_inputs: bool = True) -> Grams:
    """(1/N) Σ_x X_xᵀ X_x per distinct linear-layer input (float32 CPU tensors, d_in × d_in), with the
    aliases of the layers that read an input another layer read first. ``share_inputs=False``: one
    matrix per layer and no aliases (the same values; what a reader without alias support needs)."""
    split: set[str] = set() if share_inputs else set(linear_layers(model))
    while True:
        try:
            return _collect(model, tokenizer, records, cfg, progress, _Sharing(split))
        except _Split as diverged:  # never seen in the supported models; exact all the same
            split.add(diverged.name)


def _collect(model: torch.nn.Module, tokenizer: Any, records: Sequence[dict[str, Any]], cfg: GramConfig,
             progress: ProgressFn | None, sharing: _Sharing) -> Grams:
    encoded = encode_records(tokenizer, records, cfg.max_length, cfg.delimiter)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    layers = linear_layers(model)
    sums: dict[str, torch.Tensor] = {}  # allocated at a layer's first owned call: aliases never get one
    mask: list[torch.Tensor] = []  # the current batch's real-token mask, read by the hooks

    def hook_for(name: str, width: int) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if sharing.is_alias(name, args[0]):
                return
            x = args[0].detach()
            x = x[mask[0]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])
            x = x.to(torch.float64)
            if name not in sums:
                sums[name] = torch.zeros(width, width, dtype=torch.float64, device=device)
            sums[name].addmm_(x.T, x)
        return record

    handles = [m.register_forward_hook(hook_for(name, m.in_features)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), cfg.batch_size):
                items = encoded[start:start + cfg.batch_size]
                batch = collate(items, pad)
                mask[:] = [_token_mask(items, batch["input_ids"].shape[1]).to(device)]
                model(input_ids=batch["input_ids"].to(device))
                sharing.next_batch()
                if progress:
                    progress(f"gram: {min(start + cfg.batch_size, len(encoded))}/{len(encoded)} records")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # a layer the forward pass never called keeps a zero matrix (stored, so every weight has one)
    owned = {name: sums.get(name) for name in layers if name not in sharing.owner}
    matrices = {name: (total / len(encoded)).float().cpu() if total is not None
                else torch.zeros(layers[name].in_features, layers[name].in_features)
                for name, total in owned.items()}
    return Grams(matrices, {alias: sharing.owner[alias] for alias in layers if alias in sharing.owner})


def save_grams(grams: Grams, path: str | os.PathLike[str]) -> Path:
    """Write the stored matrices, with the aliases in the header metadata, atomically."""
    return save_tensors({n: t.float() for n, t in grams.matrices.items()}, path, aliases_metadata(grams.aliases))


def load_grams(path: str | os.PathLike[str]) -> Grams:
    """Read a Gram file (a file without aliases reads as every matrix stored)."""
    with CheckpointReader(path) as reader:
        aliases = reader_aliases(reader)
    return Grams(load_tensors(path), aliases)


def gram_matrices(finetuned_dir: str | os.PathLike[str], calib_jsonl: str | os.PathLike[str],
                  cfg: GramConfig | None = None, device: str = "cpu",
                  progress: ProgressFn | None = None) -> Grams:
    """The Gram matrices of the fine-tuned model's linear layers over the first calibration records."""
    cfg = cfg or GramConfig()
    records = read_records(calib_jsonl, limit=cfg.calib_examples)
    model, tokenizer = load_causal_lm(finetuned_dir, device)
    return collect_grams(model, tokenizer, records, cfg, progress)
