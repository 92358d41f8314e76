"""Karcher mean: the Riemannian (Fréchet) mean of the models' directions on the unit sphere, scaled by
their mean norm (Karcher, "Riemannian center of mass and mollifier smoothing", CPAM 1977; for model
merging: arXiv 2603.04972; mergekit ``karcher``).

Per tensor, for the N inputs x_i (flattened weights), α = 1/N, u_i = x_i / ‖x_i‖; inputs with
‖x_i‖ ≤ tol are left out of the direction (their α are renormalised away) but count in the scale:

    μ ← Σ α_i u_i / ‖Σ α_i u_i‖             (u_first when that norm is < tol)
    repeat ``max_iter`` times:
        v = Σ_i α_i · θ_i / sin θ_i · (u_i − cos θ_i · μ),  cos θ_i = clamp(μ·u_i, −1, 1)
            (terms with θ_i < tol skipped)
        stop if ‖v‖ < tol;  μ ← cos‖v‖ · μ + sin‖v‖ · v/‖v‖, renormalised
    θ = (Σ_i (1/N) ‖x_i‖) · μ

Every input is a model (mergekit's "ignored" base policy): a ``base_model`` that is not listed among
``models`` is appended as one more input, as mergekit does. Parameters and defaults as mergekit 0.1.5:
``max_iter`` 10, ``tol`` 1e-5. Float32 (float64 inputs stay float64). The unit vectors are recomputed
from the inputs where needed instead of being stored: memory is the inputs plus two tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs


class KarcherParameters(MethodParameters):
    max_iter: int = Field(10, ge=0, description="Most fixed-point iterations of the mean direction.")
    tol: float = Field(1e-5, ge=0.0, description="Norm below which an input, angle or step counts as zero.")


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """The scaled Karcher mean of ``tensors`` (equal weights), same shape and dtype as the first."""
    if len(tensors) == 1:
        return tensors[0]
    work = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [torch.linalg.vector_norm(x.to(work)) for x in tensors]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    weight_sum = sum(alphas[i] for i in valid)
    weights = [alphas[i] / weight_sum for i in valid]

    def unit(i: int) -> torch.Tensor:
        return (tensors[i] / norms[i]).to(tensors[i].dtype)

    mean = torch.zeros_like(tensors[valid[0]])
    for w, i in zip(weights, valid):
        mean += w * unit(i)
    mean_norm = torch.linalg.vector_norm(mean.to(work))
    mean = unit(valid[0]) if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    flat_mean = mean.reshape(-1)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for w, i in zip(weights, valid):
            u = unit(i)
            cos = torch.clamp(torch.dot(flat_mean, u.reshape(-1)), -1.0, 1.0)
            angle = torch.arccos(cos)
            if angle.item() < tol:
                continue
            tangent += w * (angle / torch.sin(angle)) * (u - cos * mean)
        step = torch.linalg.vector_norm(tangent.to(work))
        if step.item() < tol:
            break
        mean = (torch.cos(step) * mean + torch.sin(step) * (tangent / step)).to(mean.dtype)
        length = torch.linalg.vector_norm(mean.to(work))
        if length.item() > tol:
            mean = (mean / length).to(mean.dtype)
        flat_mean = mean.reshape(-1)
    scale = sum(a * n for a, n in zip(alphas, norms))
    return scale * mean


@register
class Karcher(MergeMethod):
    """θ = mean norm · Karcher mean of the unit directions (equal weights)."""

    name = "karcher"
    paper = "arXiv:2603.04972"
    kind = "weights"
    requires_base = False
    base_is_input = True
    Parameters = KarcherParameters

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        p = inputs.params
        return karcher_mean(inputs.tensors, int(p.max_iter), float(p.tol))

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "max_iter": self.params.max_iter, "tol": self.params.tol}
