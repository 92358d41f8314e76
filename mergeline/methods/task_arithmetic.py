"""Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", arXiv 2212.04089, ICLR 2023).

    τ_t = θ_t − θ0,    θ = θ0 + λ · Σ_t w_t τ_t        (negation / forgetting: w_t < 0)

Config (mergekit ``task_arithmetic``): per-model ``weight`` (required), global ``lambda`` (default 1),
``normalize`` (default **false**: a weighted *sum*, mergekit's behaviour; ``true`` divides by Σ_t w_t).
The paper's form is ``weight: 1`` for every model and ``lambda: λ`` chosen on validation.
A per-model ``density`` is accepted and ignored, as mergekit does (its task_arithmetic never sparsifies).
"""

from __future__ import annotations

from pydantic import Field

from mergeline.methods import register
from mergeline.methods._fields import TaskArithmeticFamilyParameters, WeightedModel
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods.base import PipelineEntry


class TaskArithmeticModel(WeightedModel):
    density: float = Field(1.0, description="Accepted for mergekit YAML compatibility; task_arithmetic keeps every entry.")


class TaskArithmeticParameters(TaskArithmeticFamilyParameters):
    normalize: bool = Field(False, description="Divide Σ w_t τ_t by Σ w_t (mergekit default: false).")


@register
class TaskArithmetic(TaskArithmeticFamily):
    """θ = θ0 + λ Σ_t w_t τ_t (one global λ; per-model weights; negative weight negates)."""

    name = "task_arithmetic"
    paper = "arXiv:2212.04089"
    Parameters = TaskArithmeticParameters
    PerModel = TaskArithmeticModel
    row_separable = True
    # the pipeline's ``lora`` is TA over the LoRA fine-tunes' folded vectors (lora.enabled)
    pipeline = (PipelineEntry(short="ta"), PipelineEntry(name="lora", short="lora", vectors="lora"))
    # sub, multiply and add only: a NaN stays NaN and an Inf gives ±Inf or NaN (Inf − Inf, 0·Inf), so a
    # non-finite input always leaves a non-finite output element; the engine checks the output alone.
    nonfinite_propagates = True
