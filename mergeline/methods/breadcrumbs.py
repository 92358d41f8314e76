"""Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with
Sparse Masks", arXiv 2312.06795).

Per tensor of n entries, rank |τ_t| descending; drop the top int(γ·n) (outliers) and keep the next
int(density·n) (so the bottom max(0, 1 − density − γ) share is dropped too):

    τ̃_t = m_t ⊙ τ_t,    θ = θ0 + λ Σ_t w_t τ̃_t          (``breadcrumbs``)
    θ = θ0 + λ · disjoint_merge(elect(w_t τ̃_t))            (``breadcrumbs_ties``)

mergekit's ``gamma`` (per model, default 0.01) is the paper's β. ``density`` ≥ 1 keeps the tensor
unchanged (no outlier removal), as mergekit.  Small tensors: when int(γ·n) = 0 no outlier is dropped
and the top int(density·n) entries are kept; we never zero a whole tensor for that (older mergekit did).
When int(γ·n) + int(density·n) > n fewer outliers are dropped (mergekit).  Ties at a cut-off: the lower
flat index ranks first (see ``_sparsify``).  Defaults: normalize false, rescale false (mergekit).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods._fields import Consensus, SparseModel, TaskArithmeticFamilyParameters
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods._sparsify import apply_mask, outlier_mask
from mergeline.methods.base import TensorInputs


class BreadcrumbsModel(SparseModel):
    gamma: float = Field(
        0.01, ge=0.0, lt=1.0, description="Share of largest-magnitude entries dropped as outliers (paper β)."
    )


class BreadcrumbsTiesParameters(TaskArithmeticFamilyParameters):
    consensus_method: Consensus = Field(
        "sum", description="Sign election: 'sum' of weighted deltas (TIES) or 'count' of signs."
    )


class _Breadcrumbs(TaskArithmeticFamily):
    paper = "arXiv:2312.06795"
    PerModel = BreadcrumbsModel

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        mp = inputs.model_params[position]
        if mp.density >= 1.0:
            return delta
        mask = outlier_mask(delta, float(mp.density), float(mp.gamma))
        return apply_mask(delta, mask, "l1" if inputs.params.rescale else None)


@register
class Breadcrumbs(_Breadcrumbs):
    """θ = θ0 + λ Σ_t w_t (m_t ⊙ τ_t), m_t drops outliers and small magnitudes."""

    name = "breadcrumbs"
    Parameters = TaskArithmeticFamilyParameters


@register
class BreadcrumbsTies(_Breadcrumbs):
    """Breadcrumbs masks + TIES sign election and disjoint merge."""

    name = "breadcrumbs_ties"
    Parameters = BreadcrumbsTiesParameters
    uses_consensus: ClassVar[bool] = True
