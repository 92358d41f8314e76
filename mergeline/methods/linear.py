"""Linear merge / model soup (Wortsman et al., "Model soups", arXiv 2203.05482).

    θ = Σ_i w_i θ_i / Σ_i w_i      (``normalize: true``, the default, as in mergekit ``linear``)
    θ = Σ_i w_i θ_i                (``normalize: false``)

Works on weights, not task vectors, and needs no base model. Computed in float32 (float64 inputs stay
float64) in mergekit's order and roundings, so the result is mergekit's bit for bit: 0 + w_1 θ_1 + …
in config order, each product rounded before it is added (mergekit's ``addcmul_``, where ``add_`` with
``alpha`` would fuse the multiply-add), then ÷ Σ_i w_i summed in the compute dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import WeightedModel
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs


class LinearParameters(MethodParameters):
    normalize: bool = Field(True, description="Divide the weighted sum by Σ w_i (mergekit default: true).")


@register
class Linear(MergeMethod):
    """θ = Σ_i w_i θ_i / Σ_i w_i (normalized weighted average of the models' weights)."""

    name = "linear"
    paper = "arXiv:2203.05482"
    kind = "weights"
    requires_base = False
    Parameters = LinearParameters
    PerModel = WeightedModel
    row_separable = True
    # Σ w_i θ_i keeps a NaN, and an Inf gives ±Inf or NaN (0 · Inf is NaN), never a finite value
    nonfinite_propagates = True

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        first = inputs.tensors[0]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        weights = [float(mp.weight) for mp in inputs.model_params]
        coefficients = torch.tensor(weights, dtype=dtype, device=first.device)
        result = inputs.scratch("linear", first, dtype).zero_()
        for tensor, coefficient in zip(inputs.tensors, coefficients):
            result.addcmul_(tensor, coefficient)
        if inputs.params.normalize:
            if abs(sum(weights)) < 1e-12:
                raise MergelineError(
                    f"tensor {inputs.name!r}: linear merge weights sum to 0; set normalize: false or change weight"
                )
            result.div_(coefficients.sum())
        return result

    def report(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "normalize": self.params.normalize,
            "models": [mp.model_dump() for mp in self.model_params],
        }
