"""SCE: Select, Calculate, Erase (Wan et al., "FuseChat: Knowledge Fusion of Chat Models", arXiv
2408.07990, §3.3).

Per tensor, with task vectors τ_t = θ_t − θ0 (t = 1..T):

    select:    with ``select_topk`` = k < 1, keep the entries whose variance across the T task vectors
               is among the top int(k · #{var ≠ 0}): τ_t ← m ⊙ τ_t (one mask for every t)
    calculate: w_t = mean(τ_t²) / Σ_s mean(τ_s²)          (w_t = 1/T when Σ_s mean(τ_s²) < 1e-6)
    erase:     a_t = [sgn(τ_t) = sgn(Σ_s τ_s)]             (TIES sign election on the unweighted τ)
    θ = θ0 + Σ_t a_t w_t τ_t / max(Σ_t a_t w_t, 1e-6)

Defaults and parameters as mergekit 0.1.5 ``sce``: ``select_topk`` 1 (no selection), ``int8_mask``
(memory hint only, accepted); no per-model weights. Ties in variance at the cut-off: the entries
mergekit's ``torch.topk`` returns (see ``_sparsify``). The variance of each entry over the T models is computed row chunk by row
chunk (T·chunk extra floats, not T stacked tensors). On CUDA the selection mask is computed on the CPU
(the tensors are copied to the host), so CUDA and CPU merges select the same entries.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods._sparsify import topk_mask
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

_CHUNK = 1 << 20  # entries per model stacked at once for the variance
_FLOOR = 1e-6


class SceParameters(MethodParameters):
    select_topk: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of the highest-variance entries kept (1: keep everything)."
    )
    int8_mask: bool = Field(False, description="Accepted for mergekit YAML compatibility; no effect here.")


def variance_across(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Population variance over the models, per entry (flat), computed a chunk of entries at a time."""
    flats = [t.reshape(-1) for t in tensors]
    out = torch.empty_like(flats[0])
    for start in range(0, out.numel(), _CHUNK):
        part = torch.stack([f[start:start + _CHUNK] for f in flats])
        out[start:start + _CHUNK] = torch.var(part, dim=0, unbiased=False)
    return out


def selection_mask(tensors: list[torch.Tensor], share: float) -> torch.Tensor | None:
    """SCE's select step: 0/1 mask of the top-variance entries (None: keep everything)."""
    if share >= 1.0:
        return None
    if tensors[0].device.type != "cpu":
        # The selection is made on the CPU: GPU reductions round the variances differently and flip
        # entries at the cut-off, so a CUDA merge would not keep what a CPU merge (and mergekit) keeps.
        return selection_mask([t.cpu() for t in tensors], share).to(tensors[0].device)
    var = variance_across(tensors)
    k = int(int(torch.count_nonzero(var)) * share)
    return topk_mask(var.abs(), k, ties="topk").reshape(tensors[0].shape).to(tensors[0].dtype)


def sce_weights(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """w_t = mean(τ_t²) / Σ_s mean(τ_s²), as 0-d tensors (uniform when the sum is below 1e-6)."""
    energy = torch.stack([t.square().mean() for t in tensors])
    total = torch.sum(energy).item()
    if abs(total) < _FLOOR:
        return list((torch.ones_like(energy) / len(tensors)).unbind())
    return list((energy / total).unbind())


@register
class Sce(MergeMethod):
    """θ = θ0 + Σ_t a_t w_t τ_t / Σ_t a_t w_t on the variance-selected task vectors."""

    name = "sce"
    paper = "arXiv:2408.07990"
    kind = "delta"
    requires_base = True
    Parameters = SceParameters

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        tensors = inputs.tensors
        mask = selection_mask(tensors, float(inputs.params.select_topk))
        if mask is not None:
            tensors = [t * mask for t in tensors]
        weights = sce_weights(tensors)
        votes = tensors[0].clone()
        for t in tensors[1:]:
            votes.add_(t)
        elected = torch.where(votes >= 0, 1.0, -1.0).to(votes.dtype)
        del votes
        merged = torch.zeros_like(tensors[0])
        divisor = torch.zeros_like(tensors[0])
        for t, w in zip(tensors, weights):
            coefficient = w * (torch.sign(t) == elected)  # w_t · a_t
            merged.add_(t * coefficient)
            divisor.add_(coefficient)
        return merged.div_(divisor.clamp_(min=_FLOOR))

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "select_topk": self.params.select_topk}
