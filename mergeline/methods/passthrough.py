"""Passthrough: one model's tensors, optionally scaled (mergekit ``passthrough``; with ``slices:`` it
builds frankenmerges by stacking layer ranges).

    θ = s · θ_model          (s = the model's ``scale``; unscaled when absent)

Exactly one input. Every input is a model (mergekit's "ignored" base policy): a ``base_model`` not
listed among ``models`` is one more input, so ``base_model`` with another model is an error, as in
mergekit. ``scale`` (optional, per model) is typically given with a filter list, e.g. to zero one
layer's output projection.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, FiniteFloat

from mergeline.methods import register
from mergeline.methods.base import MergeMethod, ModelParameters, TensorInputs


class PassthroughModel(ModelParameters):
    scale: FiniteFloat | None = Field(None, description="Factor applied to this model's tensor (none: copied as is).")


@register
class Passthrough(MergeMethod):
    """θ = s · θ_model."""

    name = "passthrough"
    paper = "mergekit passthrough"
    kind = "weights"
    requires_base = False
    base_is_input = True
    PerModel = PassthroughModel
    min_models = 1
    max_models = 1
    row_separable = True
    nonfinite_propagates = True  # s·x keeps NaN/Inf (0·Inf = NaN)

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        (x,) = inputs.tensors
        scale = inputs.model_params[0].scale
        return x if scale is None else x * float(scale)

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "models": [mp.model_dump() for mp in self.model_params]}
