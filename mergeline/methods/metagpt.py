"""MetaGPT: Model Exclusive Task Arithmetic (Zhou et al., "MetaGPT: Merging Large Language Models Using
Model Exclusive Task Arithmetic", arXiv 2406.11385, EMNLP 2024).

    λ_t = ‖τ_t‖² / Σ_k ‖τ_k‖²,      θ = θ0 + Σ_t λ_t τ_t          (Σ_t λ_t = 1)

The closed form minimises the average loss difference under local linearity and task-vector
orthogonality.  ``granularity``: ``model`` (default; one λ per model over all its tensors, as the
derivation), ``layer`` (one λ per model and transformer block; tensors outside blocks form one extra
unit, reported as "none") or ``tensor``.  Squared norms are accumulated in float64 in a statistics
pass; tensors matching any ``exclude_from_norm`` regex (re.search on the name) are still merged but do
not count in the norms.  A unit where every norm is 0 gets λ_t = 1/T.  The global ``lambda`` (default
1) is an ablation knob, not part of the paper.

``refine`` combines MetaGPT with a task-vector refinement, as the paper does with DARE and TIES: each
τ_t is first refined per tensor with the model's ``density`` ρ_t, and the norms and the merge both use
the refined τ̃_t.  ``ties``: keep the int(ρ·n) largest |τ| (TIES trim), then elect signs on the
λ-weighted τ̃ and sum the agreeing entries (no division: Σλ = 1 already).  ``dare``: keep each entry
with probability ρ (seeded per tensor and model, as ``dare``) and rescale by 1/ρ.
"""

from __future__ import annotations

import re
from typing import Any, Hashable, Literal

import torch
from pydantic import Field, field_validator

from mergeline.methods import register
from mergeline.methods._fields import LambdaParameters, density_field
from mergeline.methods._sparsify import apply_mask, bernoulli_mask, combine, magnitude_mask, tensor_seed
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, PipelineEntry, TensorInputs


class MetaGPTParameters(LambdaParameters):
    granularity: Literal["model", "layer", "tensor"] = Field(
        "model", description="Unit over which ‖τ_t‖² and λ_t are computed (default: whole model)."
    )
    exclude_from_norm: list[str] = Field(
        default_factory=list, description="Regexes (re.search) of tensor names left out of the norms."
    )
    refine: Literal["none", "ties", "dare"] = Field(
        "none", description="Refine each task vector first: TIES trim + sign election, or DARE drop and rescale."
    )
    seed: int = Field(0, ge=0, description="Seed of refine: dare's drop masks (with tensor name and model index).")

    @field_validator("exclude_from_norm")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"exclude_from_norm: bad regex {pattern!r}: {exc}") from None
        return patterns


class MetaGPTModel(ModelParameters):
    density: float = density_field(1.0)


@register
class MetaGPT(MergeMethod):
    """θ = θ0 + Σ_t λ_t τ_t with λ_t = ‖τ_t‖² / Σ_k ‖τ_k‖² per unit (model / layer / tensor)."""

    name = "metagpt"
    paper = "arXiv:2406.11385"
    Parameters = MetaGPTParameters
    PerModel = MetaGPTModel
    # closed-form coefficients: λ is not swept (it would be an ablation, not MetaGPT)
    pipeline = (PipelineEntry(short="metagpt", sweeps=("density",)),)  # density: with refine (ties / dare)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._exclude = [re.compile(p) for p in params.exclude_from_norm]
        self._sq: dict[Hashable, dict[int, float]] = {}  # unit -> model -> ‖τ‖²
        self._lambdas: dict[Hashable, dict[int, float]] = {}

    def _unit(self, inputs: TensorInputs) -> Hashable:
        granularity = inputs.params.granularity
        if granularity == "model":
            return "model"
        if granularity == "layer":
            return inputs.layer  # None: every tensor outside the blocks
        return inputs.name

    def statistics_passes(self) -> int:
        return 0 if self.params.granularity == "tensor" else 1

    def _excluded(self, name: str) -> bool:
        return any(p.search(name) for p in self._exclude)

    def _refined(self, inputs: TensorInputs) -> list[torch.Tensor]:
        """τ̃_t of every model (the same tensors in the statistics and the merge pass: masks are seeded)."""
        p = inputs.params
        if p.refine == "none":
            return inputs.tensors
        out = []
        for delta, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
            density = float(mp.density)
            if density >= 1.0:
                out.append(delta)
            elif p.refine == "ties":
                out.append(delta * magnitude_mask(delta, density).to(delta.dtype))
            else:
                mask = bernoulli_mask(delta.shape, density, tensor_seed(p.seed, inputs.name, model), delta.device)
                out.append(apply_mask(delta, mask, "inverse_density", density))
        return out

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:
        unit = self._sq.setdefault(self._unit(inputs), {})
        for delta, model in zip(self._refined(inputs), inputs.model_index):
            sq = 0.0 if self._excluded(inputs.name) else float(delta.double().square().sum())
            unit[model] = unit.get(model, 0.0) + sq

    def _lambdas_for(self, unit_sq: dict[int, float]) -> dict[int, float]:
        total = sum(unit_sq.values())
        if total <= 0.0:
            return {m: 1.0 / len(unit_sq) for m in unit_sq}
        return {m: sq / total for m, sq in unit_sq.items()}

    def finalize_statistics(self, pass_index: int) -> None:
        self._lambdas = {unit: self._lambdas_for(sq) for unit, sq in self._sq.items()}

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        unit = self._unit(inputs)
        if unit not in self._lambdas:  # tensor granularity: the statistic is local
            self.accumulate(inputs, 0)
            self._lambdas[unit] = self._lambdas_for(self._sq[unit])
        lambdas = self._lambdas[unit]
        refined = self._refined(inputs)
        weights = [lambdas[model] for model in inputs.model_index]
        consensus = "sum" if inputs.params.refine == "ties" else None
        # normalize=False: Σλ_t = 1 is MetaGPT's own scale; combine returns λ·Σ (agreeing) λ_t τ̃_t.
        return combine(refined, weights, consensus, False, float(inputs.params.lambda_))

    def report(self) -> dict[str, Any]:
        def key(unit: Hashable) -> str:
            return "none" if unit is None else str(unit)

        return {
            "method": self.name,
            "granularity": self.params.granularity,
            "lambda": self.params.lambda_,
            "exclude_from_norm": list(self.params.exclude_from_norm),
            "refine": self.params.refine,
            "densities": [float(mp.density) for mp in self.model_params],
            "lambdas": {key(u): {str(m): v for m, v in sorted(ls.items())} for u, ls in self._lambdas.items()},
            "squared_norms": {key(u): {str(m): v for m, v in sorted(sq.items())} for u, sq in self._sq.items()},
        }
