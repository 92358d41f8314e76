"""NearSwap: take the other model's value only where it is already near the base's (alchemonaut,
https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001; mergekit ``nearswap``).

Element-wise, with a = θ_base, b = θ_other and the similarity threshold t > 0:

    w = clamp(t / max(|a − b|, 1e-6), 0, 1),      θ = w · b + (1 − w) · a

Entries closer than t move all the way to b; farther ones move by a share t/|a − b| that shrinks with
the distance. Parameter as mergekit 0.1.5: ``t`` (required). Exactly one model besides the base.
Element-wise, so the engine merges it in row blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, FiniteFloat

from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

_FLOOR = 1e-6


class NearSwapParameters(MethodParameters):
    t: FiniteFloat = Field(description="Distance |θ_base − θ_other| under which the other model's value is taken whole.")


@register
class NearSwap(MergeMethod):
    """θ = w b + (1 − w) a, w = clamp(t / |a − b|, 0, 1)."""

    name = "nearswap"
    paper = "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"
    kind = "weights"
    requires_base = True
    Parameters = NearSwapParameters
    min_models = 1
    max_models = 1
    row_separable = True
    # NaN stays NaN; an infinite |a − b| gives w = 0 and keeps a (Inf), an infinite b gives 0·Inf = NaN
    nonfinite_propagates = True

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        a, (b,) = inputs.base, inputs.tensors
        assert a is not None
        share = torch.sub(a, b, out=inputs.scratch("share", a)).abs_().clamp_(min=_FLOOR)
        # t · (1/|a − b|), not t / |a − b|: mergekit's ``t / x`` is torch's reciprocal-then-multiply,
        # and this rounds the same way.
        share.reciprocal_().mul_(float(inputs.params.t)).clamp_(0, 1)
        return share * b + (1 - share) * a

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "t": self.params.t}
