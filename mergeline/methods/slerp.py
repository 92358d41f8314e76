"""SLERP: spherical linear interpolation between two models (Shoemake 1985; mergekit ``slerp``).

Per tensor, with a = θ_base and b = θ_other flattened, â = a/‖a‖, b̂ = b/‖b‖ (norms ≤ 1e-8 count as 1),
cos Ω = clamp(â·b̂, −1, 1):

    θ = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b          if |cos Ω| ≤ 0.9995
    θ = (1−t)·a + t·b                                      otherwise (nearly collinear: lerp)

The coefficients multiply the *un-normalised* tensors. t = 0 gives the base. Computed in float32
(float64 inputs stay float64), as mergekit.  Exactly two models, one of them ``base_model``: the engine
may list the base among ``models`` (mergekit style) or only the other model; both work.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

DOT_THRESHOLD = 0.9995
_EPS = 1e-8


class SlerpParameters(MethodParameters):
    t: float = Field(
        ge=0.0, le=1.0, description="Interpolation factor in [0, 1]: 0 = base model, 1 = the other model."
    )


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1); same shape as ``a``."""
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    x = a.reshape(-1).to(dtype)
    y = b.reshape(-1).to(dtype)
    if x.numel() == 0:
        return ((1 - t) * x + t * y).reshape(a.shape)
    norm_x = torch.linalg.vector_norm(x)
    norm_y = torch.linalg.vector_norm(y)
    norm_x = norm_x if norm_x > _EPS else torch.ones_like(norm_x)
    norm_y = norm_y if norm_y > _EPS else torch.ones_like(norm_y)
    dot = ((x / norm_x) * (y / norm_y)).sum().clamp(-1, 1)
    if float(dot.abs()) > DOT_THRESHOLD:
        return ((1 - t) * x + t * y).reshape(a.shape)
    # Coefficients in the compute dtype too (float32), as mergekit.
    omega = torch.acos(dot)
    t_ = torch.tensor(t, dtype=dtype, device=x.device)
    coef_a = torch.sin((1 - t_) * omega) / torch.sin(omega)
    coef_b = torch.sin(t_ * omega) / torch.sin(omega)
    return (coef_a * x + coef_b * y).reshape(a.shape)


@register
class Slerp(MergeMethod):
    """θ = [sin((1−t)Ω) θ_base + sin(tΩ) θ_other] / sin Ω, lerp when |cos Ω| > 0.9995."""

    name = "slerp"
    paper = "doi:10.1145/325165.325242 (Shoemake 1985); mergekit slerp"
    kind = "weights"
    requires_base = True
    Parameters = SlerpParameters
    min_models = 1
    max_models = 2

    def _other(self, inputs: TensorInputs) -> torch.Tensor:
        base = inputs.base
        if base is None:
            raise MergelineError(f"tensor {inputs.name!r}: slerp needs base_model")
        others = [x for x in inputs.tensors if x is not base]
        if len(others) == 2:
            # The base is listed among the models: drop the copy equal to it (if both equal the base,
            # either choice gives the same result).
            others = [x for x in others if not torch.equal(x, base)] or others[:1]
        if len(others) != 1:
            raise MergelineError(
                f"tensor {inputs.name!r}: slerp needs exactly one model besides base_model, got {len(others)}"
            )
        return others[0]

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        other = self._other(inputs)
        assert inputs.base is not None
        return slerp(float(inputs.params.t), inputs.base, other)

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "t": self.params.t, "dot_threshold": DOT_THRESHOLD}
