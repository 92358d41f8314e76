"""TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
arXiv 2306.01708, NeurIPS 2023).

    trim:   τ̂_t = top-k(τ_t) by magnitude (k = density share of entries)
    elect:  γ = sgn(Σ_t w_t τ̂_t)                           ("sum"; "count" votes with Σ_t sgn(w_t τ̂_t))
    merge:  τ_m = Σ_t [sgn(w_t τ̂_t) = γ] w_t τ̂_t / Σ_t [sgn(w_t τ̂_t) = γ] w_t     (disjoint mean)
    θ = θ0 + λ τ_m

Defaults follow mergekit ``ties``: trim **per tensor** keeping exactly k = max(1, int(density·n))
entries (tie rule: at equal magnitude the lowest flat index is kept; see ``_sparsify``), election
``sum`` on the weighted deltas, zeros never vote, weight-weighted disjoint mean (``normalize: true``;
``false`` gives the disjoint sum), ``lambda`` 1.  Paper option ``trim_scope: global``: each task vector
keeps its top density share over the **whole model** (official TIES code), found exactly with two
streaming statistics passes (``_global_topk``); there, every entry equal to the k-th largest magnitude is
kept.  ``rescale: true`` rescales each trimmed vector to its original L1 norm (mergekit option).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import Consensus, SparseModel, TaskArithmeticFamilyParameters
from mergeline.methods._global_topk import GlobalTopK
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods._sparsify import apply_mask, keep_count, magnitude_mask
from mergeline.methods.base import MethodParameters, ModelParameters, TensorInputs


class TiesParameters(TaskArithmeticFamilyParameters):
    normalize: bool = Field(True, description="Disjoint mean (true, mergekit default) or disjoint sum (false).")
    consensus_method: Consensus = Field(
        "sum", description="Sign election: 'sum' of weighted deltas (TIES) or 'count' of signs."
    )
    trim_scope: Literal["tensor", "global"] = Field(
        "tensor",
        description="Magnitude trim per tensor (mergekit, default) or over the whole model (TIES paper).",
    )


@register
class Ties(TaskArithmeticFamily):
    """θ = θ0 + λ · disjoint_mean(elect(trim(w_t τ_t)))."""

    name = "ties"
    paper = "arXiv:2306.01708"
    Parameters = TiesParameters
    PerModel = SparseModel
    uses_consensus = True

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._global = GlobalTopK() if params.trim_scope == "global" else None
        self._density: dict[int, float] = {}
        self._kept: dict[int, int] = {}
        self._total: dict[int, int] = {}

    def statistics_passes(self) -> int:
        return GlobalTopK.passes if self._global is not None else 0

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:
        assert self._global is not None
        for delta, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
            density = float(mp.density)
            if self._density.setdefault(model, density) != density:
                raise MergelineError(
                    f"tensor {inputs.name!r}: trim_scope global needs one density per model; "
                    f"model {model} has {density} here and {self._density[model]} elsewhere"
                )
            self._global.add(model, delta.abs(), pass_index, inputs.name)

    def finalize_statistics(self, pass_index: int) -> None:
        assert self._global is not None
        counts = {m: keep_count(d, self._global.count(m)) for m, d in self._density.items()}
        self._global.finalize(pass_index, counts)

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        model = inputs.model_index[position]
        if self._global is not None:
            mask = self._global.mask(model, delta.abs())
        else:
            mask = magnitude_mask(delta, float(inputs.model_params[position].density))
        self._kept[model] = self._kept.get(model, 0) + int(mask.sum())
        self._total[model] = self._total.get(model, 0) + mask.numel()
        return apply_mask(delta, mask, "l1" if inputs.params.rescale else None)

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["trim_scope"] = self.params.trim_scope
        out["kept_fraction"] = {str(m): self._kept[m] / max(1, self._total[m]) for m in sorted(self._kept)}
        if self._global is not None:
            out["global_threshold"] = {str(m): t for m, t in sorted(self._global.thresholds.items())}
        return out
