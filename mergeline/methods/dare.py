"""DARE: Drop And REscale (Yu et al., "Language Models are Super Mario: Absorbing Abilities from
Homologous Models as a Free Lunch", arXiv 2311.03099, ICML 2024).

    m_t ~ Bernoulli(1 − p) element-wise,    τ̃_t = m_t ⊙ τ_t · r_t,    then TA or TIES on τ̃_t

``density`` = 1 − p (keep probability). ``dare_linear`` = DARE + task arithmetic, ``dare_ties`` = DARE +
TIES sign election (no magnitude trim).  Defaults follow mergekit: ``rescale: true`` with
``rescale_mode: l1`` (r_t = ‖τ_t‖₁ / ‖m_t ⊙ τ_t‖₁: matches each tensor's L1 norm); the paper's
``rescale_mode: inverse_density`` (r_t = 1/(1 − p), unbiased element-wise) is the option.  ``normalize``
defaults to false for both (mergekit).

Deterministic, unlike mergekit (global RNG): the mask of model i on tensor ``name`` is drawn from a
``torch.Generator`` of the compute device seeded with sha256(seed, name, i), so a merge reproduces bit
for bit on the same kind of device and in any tensor order (a CPU and a CUDA generator draw different
masks).  The seed is in the report.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods._fields import Consensus, SparseModel, TaskArithmeticFamilyParameters
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods._sparsify import apply_mask, bernoulli_mask, tensor_seed
from mergeline.methods.base import PipelineEntry, TensorInputs


class DareParameters(TaskArithmeticFamilyParameters):
    rescale: bool = Field(True, description="Rescale survivors after dropping (mergekit default: true).")
    rescale_mode: Literal["l1", "inverse_density"] = Field(
        "l1",
        description="'l1': match each tensor's L1 norm (mergekit, default); 'inverse_density': ×1/density (paper).",
    )
    seed: int = Field(0, ge=0, description="Seed of the drop masks (combined with tensor name and model index).")


class DareTiesParameters(DareParameters):
    consensus_method: Consensus = Field(
        "sum", description="Sign election: 'sum' of weighted deltas (TIES) or 'count' of signs."
    )


class _Dare(TaskArithmeticFamily):
    paper = "arXiv:2311.03099"
    PerModel = SparseModel

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        density = float(inputs.model_params[position].density)
        if density >= 1.0:
            return delta
        seed = tensor_seed(inputs.params.seed, inputs.name, inputs.model_index[position])
        mask = bernoulli_mask(delta.shape, density, seed, delta.device)
        mode = inputs.params.rescale_mode if inputs.params.rescale else None
        return apply_mask(delta, mask, mode, density)

    def report(self) -> dict[str, Any]:
        out = super().report()
        out.update(seed=self.params.seed, rescale_mode=self.params.rescale_mode)
        return out


@register
class DareLinear(_Dare):
    """θ = θ0 + λ Σ_t w_t (m_t ⊙ τ_t) r_t."""

    name = "dare_linear"
    Parameters = DareParameters


@register
class DareTies(_Dare):
    """θ = θ0 + λ · disjoint_merge(elect(w_t (m_t ⊙ τ_t) r_t))."""

    name = "dare_ties"
    Parameters = DareTiesParameters
    uses_consensus: ClassVar[bool] = True
    pipeline = (PipelineEntry(short="dare", sweeps=("lambda", "density")),)
