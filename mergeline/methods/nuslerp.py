"""NuSLERP: SLERP between two models with weights, row-wise or flattened, optionally around a base
(mergekit ``nuslerp``; SLERP: Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985).

Two models with weights w_a, w_b give t = w_b / (w_a + w_b) (t = ½ when |w_a + w_b| < 1e-6). With a
``base_model`` the interpolation runs between the task vectors a = θ_a − θ0, b = θ_b − θ0 and the
result is θ0 + slerp(t; a, b); without one, between the weights. Per row (``nuslerp_flatten: false``:
rows along the last dim, or along dim 0 with ``nuslerp_row_wise: true``) or over the flattened
tensor (``nuslerp_flatten: true``, the default):

    â = a / max(‖a‖, 1e-7),  b̂ likewise,  cos Ω = clamp(â·b̂, −1, 1)
    slerp = [sin((1−t)Ω) a + sin(tΩ) b] / sin Ω          (on the un-normalised a, b)
    slerp = (1−t) a + t b                                where 1 − cos²Ω ≤ 1e-16 (collinear)

Parameters and defaults as mergekit 0.1.5: per-model ``weight`` (required), ``nuslerp_row_wise``
false, ``nuslerp_flatten`` true. Exactly two models besides the base; a ``base_model`` listed among
``models`` is the base, not a third model. Float32 (the compute dtype).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods._fields import WeightedModel
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

_NORM_FLOOR = 1e-7
_COLLINEAR = 1e-8


class NuSlerpParameters(MethodParameters):
    nuslerp_row_wise: bool = Field(False, description="Interpolate rows along dim 0 (columns of a matrix).")
    nuslerp_flatten: bool = Field(True, description="Interpolate the flattened tensor as one vector (default).")


def row_slerp(t: float, a: torch.Tensor, b: torch.Tensor, dim: int = -1, flatten: bool = False) -> torch.Tensor:
    """SLERP of every row (vectors along ``dim``) of ``a`` towards ``b``, or of the flattened tensors."""
    shape = a.shape
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif dim != -1:
        a, b = a.transpose(dim, -1), b.transpose(dim, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=_NORM_FLOOR)

    cos = torch.sum(unit(a) * unit(b), dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= _COLLINEAR**2
    omega = torch.acos(torch.where(collinear, 0, cos))  # finite on the collinear branch too
    sin_omega = torch.sin(omega)
    result = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    result = torch.where(collinear, (1 - t) * a + t * b, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


@register
class NuSlerp(MergeMethod):
    """θ = θ0 + slerp(w_b / (w_a + w_b); θ_a − θ0, θ_b − θ0) (θ0 = 0 without base_model)."""

    name = "nuslerp"
    paper = "mergekit nuslerp; doi:10.1145/325165.325242 (Shoemake 1985)"
    kind = "weights"
    requires_base = False
    base_optional = True
    Parameters = NuSlerpParameters
    PerModel = WeightedModel
    min_models = 2
    max_models = 2

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        w_a, w_b = (float(mp.weight) for mp in inputs.model_params)
        total = w_a + w_b
        t = 0.5 if abs(total) < 1e-6 else w_b / total
        p = inputs.params
        dim = 0 if p.nuslerp_row_wise else -1
        a, b = inputs.tensors
        if inputs.base is None:
            return row_slerp(t, a, b, dim, bool(p.nuslerp_flatten))
        return inputs.base + row_slerp(t, a - inputs.base, b - inputs.base, dim, bool(p.nuslerp_flatten))

    def report(self) -> dict[str, Any]:
        return {"method": self.name, **self.params.model_dump(),
                "models": [mp.model_dump() for mp in self.model_params]}
