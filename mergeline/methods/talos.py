"""TaLoS merge side (Iurada, Ciccone, Tommasi, "Efficient Model Editing with Task-Localized Sparse
Fine-tuning", arXiv 2504.02620, ICLR 2025).  The sparse fine-tuning lives in ``mergeline.finetune``;
merging is task arithmetic over the sparse task vectors:

    τ_t = θ_t^TaLoS − θ0,   τ̃_t = m_t ⊙ τ_t (optional per-model input ``mask``),   θ = θ0 + λ Σ_t w_t τ̃_t

Defaults: ``weight`` 1 per model, ``lambda`` 1 (the paper picks α on a validation grid), ``normalize``
false.  A mask entry counts as kept when it is non-zero.  The report gives each model's fraction of
non-zero task-vector entries after masking (a check that the vectors are as sparse as trained).
"""

from __future__ import annotations

from typing import Any

import torch

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import OptionalWeightModel, TaskArithmeticFamilyParameters
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods._sparsify import apply_mask
from mergeline.methods.base import MethodParameters, ModelParameters, PipelineEntry, TensorInputs
from pydantic import Field


class TalosModel(OptionalWeightModel):
    mask: str | None = Field(
        None, description="Optional path of a 0/1 mask (safetensors) multiplied into this task vector."
    )


@register
class TaLoS(TaskArithmeticFamily):
    """θ = θ0 + λ Σ_t w_t (m_t ⊙ τ_t) over TaLoS-sparse task vectors."""

    name = "talos"
    paper = "arXiv:2504.02620"
    Parameters = TaskArithmeticFamilyParameters
    PerModel = TalosModel
    model_inputs = ("mask",)
    pipeline = (PipelineEntry(short="talos", vectors="talos"),)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._nonzero: dict[int, int] = {}
        self._total: dict[int, int] = {}

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        model = inputs.model_index[position]
        masks = inputs.model_inputs.get("mask")
        mask = masks[position] if masks else None
        if mask is not None:
            if mask.shape != delta.shape:
                raise MergelineError(
                    f"tensor {inputs.name!r}: mask of model {model} has shape {tuple(mask.shape)}, "
                    f"task vector has {tuple(delta.shape)}"
                )
            delta = apply_mask(delta, mask.to(delta.device) != 0)
        self._nonzero[model] = self._nonzero.get(model, 0) + int(torch.count_nonzero(delta))
        self._total[model] = self._total.get(model, 0) + delta.numel()
        return delta

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["nonzero_fraction"] = {
            str(m): self._nonzero[m] / max(1, self._total[m]) for m in sorted(self._nonzero)
        }
        return out
