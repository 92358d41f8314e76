"""RAM: Reinforced Agent Merging (arXiv 2601.13572; mergekit ``ram`` and ``ramplus_tl``).

Per tensor, with task vectors τ_t (t = 1..T) and the threshold ε (``epsilon``): an entry of τ_t
*contributes* when |τ_t| > ε; c = Σ_t [|τ_t| > ε] counts the contributors of each entry. Entries with
one contributor are *unique*, with more *shared*:

    ram:         θ = θ0 + Σ_t τ_t [|τ_t| > ε] · ([c = 1] + [c > 1] / c)
    ramplus_tl:  ρ_t = #{shared entries of t} / max(#{unique entries of t}, ε)      (per tensor)
                 λ_t = 1 + r · clamp(ρ_t, 0, α)
                 θ = θ0 + Σ_t τ_t [|τ_t| > ε] · (λ_t [c = 1] + [c > 1] / c)

Unique entries are taken whole (scaled up by λ_t in RAM+, "tensor-local": the counts are per tensor),
shared ones averaged over their contributors. Defaults as mergekit 0.1.5: ``epsilon`` 1e-5, ``r`` 0.1,
``alpha`` 0.2; no per-model weights. ``ram`` is element-wise (row blocks); ``ramplus_tl`` needs each
tensor's counts, so it takes the tensor whole.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs


class RamParameters(MethodParameters):
    epsilon: float = Field(1e-5, ge=0.0, description="|τ| above which an entry of a task vector contributes.")


class RamPlusParameters(RamParameters):
    r: float = Field(0.1, description="Gain r of unique entries: λ_t = 1 + r · clamp(ρ_t, 0, α).")
    alpha: float = Field(0.2, ge=0.0, description="Cap α of the shared/unique ratio ρ_t.")


def contributions(tensors: list[torch.Tensor], epsilon: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each model's contributing-entry mask, and the count c of contributors per entry (int64)."""
    masks = [t.abs() > epsilon for t in tensors]
    count = torch.zeros(tensors[0].shape, dtype=torch.int64, device=tensors[0].device)
    for m in masks:
        count += m
    return masks, count


def ram_merge(tensors: list[torch.Tensor], epsilon: float, unique_gain: list[torch.Tensor | float]) -> torch.Tensor:
    """Σ_t τ_t m_t (g_t [c = 1] + [c > 1] / c) with m_t the contributing entries and g_t the gains."""
    masks, count = contributions(tensors, epsilon)
    unique, shared = count == 1, count > 1
    share = count.clamp(min=1)
    merged = torch.zeros_like(tensors[0])
    for t, m, gain in zip(tensors, masks, unique_gain):
        kept = t * m
        alone = kept * unique
        if not isinstance(gain, float) or gain != 1.0:
            alone = alone * gain
        merged += alone + kept * shared / share
    return merged


class _Ram(MergeMethod):
    paper = "arXiv:2601.13572"
    kind = "delta"
    requires_base = True

    def report(self) -> dict[str, Any]:
        return {"method": self.name, **self.params.model_dump()}


@register
class Ram(_Ram):
    """θ = θ0 + Σ_t unique entries of τ_t + shared entries averaged over their contributors."""

    name = "ram"
    Parameters = RamParameters
    row_separable = True
    # masks multiply (NaN·0 = NaN, Inf·0 = NaN): a non-finite task-vector entry reaches the output
    nonfinite_propagates = True

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        return ram_merge(inputs.tensors, float(inputs.params.epsilon), [1.0] * len(inputs.tensors))


@register
class RamPlusTensorLocal(_Ram):
    """RAM with unique entries of τ_t scaled by λ_t = 1 + r · clamp(#shared_t / #unique_t, 0, α)."""

    name = "ramplus_tl"
    Parameters = RamPlusParameters
    result_dtype = torch.float32  # as mergekit writes it

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        p = inputs.params
        eps = float(p.epsilon)
        masks, count = contributions(inputs.tensors, eps)
        unique, shared = count == 1, count > 1
        gains: list[torch.Tensor | float] = []
        for m in masks:
            ratio = (m & shared).sum() / (m & unique).sum().clamp(min=eps)
            gains.append(1 + float(p.r) * ratio.clamp(min=0, max=float(p.alpha)))
        del masks, count, unique, shared
        return ram_merge(inputs.tensors, eps, gains)
