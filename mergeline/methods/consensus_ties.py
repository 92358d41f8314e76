"""Consensus TIES: TALL-mask consensus over TIES-Merging (Wang, Dimitriadis, Ortiz-Jimenez, Fleuret,
Frossard, "Localizing Task Information for Improved Model Merging and Compression", ICML 2024,
arXiv 2405.07813; TIES: Yadav et al., arXiv 2306.01708).

With task vectors τ_t (t = 1..T), n_t = the number of entries of the whole model:

    trim:   τ̂_t = τ_t ⊙ [|τ_t| ≥ v_t],   v_t = the (int(ρ_t · n_t) + 1)-th largest |τ_t| over the whole model
    elect:  γ = sgn(Σ_t τ̂_t), and where that is 0, γ = sgn(Σ over every entry of the model of sgn(Σ_t τ̂_t))
    merge:  τ_MTL = Σ_t τ̂_t ⊙ [τ̂_t > 0 if γ > 0 else τ̂_t < 0]                       (disjoint sum)
    m_t = |τ_t| > λ_t · |τ_MTL − τ_t|,       θ = θ0 + λ · τ_MTL ⊙ [Σ_t m_t ≥ k]

Follows the authors' code (nik-dim/tall_masks: ``consensus`` with ``use_ties: true``, ``ties_merging``
with ``reset_thresh`` 20 and ``dis-sum``; the TALL masks compare the untrimmed τ_t with the TIES vector):
the trim threshold is their kthvalue of the (n − int(ρn))-th smallest magnitude, which keeps
int(ρn) + 1 entries and every entry tied with the last; a zero vote takes the model-wide majority sign
(and where that is 0 too, the negative entries are summed, as their ``torch.where``); ``density``
ρ = 1 keeps every entry. The whole-model quantities come from statistics passes (an exact global
threshold in two passes, ``_global_topk``; then the majority sign), after which every entry is merged
on its own, so tensors are merged in row blocks. Defaults: ``lambda`` 1, ``consensus_k`` 2,
``tall_mask_lambda`` 0.6 (global or per model), ``density`` 0.2 (one value per model).
"""

from __future__ import annotations

from typing import Any

import torch

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import density_field
from mergeline.methods._global_topk import GlobalTopK
from mergeline.methods._tall import ConsensusMethod, ConsensusParameters, TallModel
from mergeline.methods.base import MethodParameters, ModelParameters, PipelineEntry, TensorInputs


class ConsensusTiesModel(TallModel):
    density: float = density_field(0.2)


@register
class ConsensusTies(ConsensusMethod):
    """θ = θ0 + λ · TIES(τ) ⊙ [#{t: |τ_t| > λ_t |TIES(τ) − τ_t|} ≥ k], TIES trimmed over the whole model."""

    name = "consensus_ties"
    paper = "arXiv:2405.07813"
    Parameters = ConsensusParameters
    PerModel = ConsensusTiesModel
    pipeline = (PipelineEntry(short="cties", sweeps=("lambda", "density", "tall_mask_lambda")),)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._trims = any(float(mp.density) < 1.0 for mp in model_params)
        self._global = GlobalTopK()
        self._density: dict[int, float] = {}
        self._votes = 0  # Σ over the model of sgn(Σ_t τ̂_t)
        self.majority = 0.0

    def statistics_passes(self) -> int:
        return (GlobalTopK.passes if self._trims else 0) + 1

    def _trimmed(self, inputs: TensorInputs) -> list[torch.Tensor]:
        out = []
        for tau, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
            out.append(tau if float(mp.density) >= 1.0 else tau * self._global.mask(model, tau.abs()))
        return out

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:
        if self._trims and pass_index < GlobalTopK.passes:
            for tau, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
                density = float(mp.density)
                if self._density.setdefault(model, density) != density:
                    raise MergelineError(f"tensor {inputs.name!r}: consensus_ties trims over the whole model, so "
                                         f"it needs one density per model; model {model} has {density} here and "
                                         f"{self._density[model]} elsewhere")
                self._global.add(model, tau.abs(), pass_index, inputs.name)
            return
        self._votes += int(torch.sign(sum(self._trimmed(inputs))).sum())

    def finalize_statistics(self, pass_index: int) -> None:
        if self._trims and pass_index < GlobalTopK.passes:
            counts = {m: min(self._global.count(m), int(d * self._global.count(m)) + 1)
                      for m, d in self._density.items() if d < 1.0}
            self._global.finalize(pass_index, counts)
        else:
            self.majority = float((self._votes > 0) - (self._votes < 0))

    def multi_task_vector(self, inputs: TensorInputs) -> torch.Tensor:
        trimmed = self._trimmed(inputs)
        elected = torch.sign(sum(trimmed))
        elected[elected == 0] = self.majority
        merged = torch.zeros_like(inputs.tensors[0])
        for part in trimmed:
            merged.add_(part * torch.where(elected > 0, part > 0, part < 0))
        return merged

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["density"] = [mp.density for mp in self.model_params]
        out["majority_sign"] = self.majority
        if self._trims:
            out["trim_threshold"] = {str(m): v for m, v in sorted(self._global.thresholds.items())}
        return out
