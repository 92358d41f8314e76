"""Multi-SLERP: barycentric interpolation of several models on a hypersphere (Goddard,
"Multi-SLERP", https://goddard.blog/posts/multislerp-wow-what-a-cool-idea; mergekit ``multislerp``).

Per tensor, with vectors x_i (the flattened weights, or the task vectors θ_i − θ0 when a
``base_model`` is given) and weights w_i (divided by Σ w_i with ``normalize_weights: true``):

    u_i = x_i / (‖x_i‖ + eps)                         points on the unit sphere
    μ = Σ_i w_i u_i / ‖Σ_i w_i u_i‖                   their weighted Euclidean mean, projected back
    v = Σ_i w_i (u_i − (u_i·μ) μ)                     the weighted mean in μ's tangent space
    r = μ cos ‖v‖' + v sin ‖v‖' / ‖v‖'               exponential map, with ‖v‖' = ‖v‖ + eps
    θ = θ0 + (Σ_i w_i ‖x_i‖) · r                      (θ0 = 0 without a base)

One model: its weights unchanged. When ‖Σ_i w_i u_i‖ < eps (antipodal inputs that cancel): two models
fall back to Σ_i w_i x_i (+ θ0); more is an error naming the tensor. Defaults as mergekit 0.1.5:
per-model ``weight`` (required), ``normalize_weights`` true, ``eps`` 1e-8. A ``base_model`` listed among
``models`` is the base, not an input. Float32 (the compute dtype); one model at a time, never stacked.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import WeightedModel
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs


class MultiSlerpParameters(MethodParameters):
    normalize_weights: bool = Field(True, description="Divide the weights by their sum (mergekit default: true).")
    eps: float = Field(1e-8, gt=0.0, description="Added to norms before dividing by them.")


@register
class MultiSlerp(MergeMethod):
    """θ = θ0 + (Σ w_i ‖x_i‖) · exp_μ(Σ_i w_i log_μ(x_i / ‖x_i‖))."""

    name = "multislerp"
    paper = "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"
    kind = "weights"
    requires_base = False
    base_optional = True
    Parameters = MultiSlerpParameters
    PerModel = WeightedModel

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        base = inputs.base
        if len(inputs.tensors) == 1:
            return inputs.tensors[0]
        eps = float(inputs.params.eps)
        vectors = [(x if base is None else x - base).reshape(-1) for x in inputs.tensors]
        weights = torch.tensor([float(mp.weight) for mp in inputs.model_params], dtype=vectors[0].dtype,
                               device=vectors[0].device)
        if inputs.params.normalize_weights:
            weights = weights / weights.sum()
        norms = [torch.linalg.vector_norm(v, dim=-1, keepdim=True) for v in vectors]
        units = [v / (n + eps) for v, n in zip(vectors, norms)]
        mean = sum(u * w for u, w in zip(units, weights))
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm < eps:
            if len(vectors) != 2:
                raise MergelineError(
                    f"tensor {inputs.name!r}: multislerp inputs cancel out (weighted mean of the unit vectors "
                    "is 0: antipodal models with balancing weights); change a weight"
                )
            lerp = vectors[0] * weights[0] + vectors[1] * weights[1]
            return self._place(lerp, inputs)
        mean = mean / mean_norm
        tangent = sum((u - (u * mean).sum(-1, keepdim=True) * mean) * w for u, w in zip(units, weights))
        del units
        length = torch.linalg.vector_norm(tangent) + eps
        result = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
        scale = sum(n.squeeze(-1) * w for n, w in zip(norms, weights))
        return self._place(result * scale, inputs)

    @staticmethod
    def _place(flat: torch.Tensor, inputs: TensorInputs) -> torch.Tensor:
        out = flat.reshape(inputs.tensors[0].shape)
        return out if inputs.base is None else out + inputs.base

    def report(self) -> dict[str, Any]:
        return {"method": self.name, **self.params.model_dump(),
                "models": [mp.model_dump() for mp in self.model_params]}
