"""Model Stock (Jang, Yun, Han, "Model Stock: All we need is just a few fine-tuned models", arXiv
2403.19522, ECCV 2024).

Per tensor (or per row with ``filter_wise: true``; rows run along the last dim, a 1-D tensor is one
row), with N ≥ 2 fine-tuned weights θ_i and the base θ0, offsets δ_i = θ_i − θ0:

    cos θ = mean over pairs i < j of clamp(δ_i·δ_j / max(‖δ_i‖‖δ_j‖, 1e-6), −1, 1)
    t = N cos θ / (1 + (N − 1) cos θ)                (t = 0 where |1 + (N − 1) cos θ| < 1e-6)
    θ = t · (Σ_i θ_i / N) + (1 − t) · θ0

The paper derives t for N = 2 per layer; the mean pairwise cosine for N > 2 and the per-tensor unit
are mergekit's (``model_stock``, defaults here), and so is keeping the base where t is singular.
Works on weights (not task vectors); float32 (float64 inputs stay float64), reductions in mergekit's
order, so results are bit-equal to mergekit's on CPU. Temporaries live in the engine's reused buffers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

_NORM_FLOOR = 1e-6
_SINGULAR = 1e-6


class ModelStockParameters(MethodParameters):
    filter_wise: bool = Field(False, description="One t per row (last dim) instead of one per tensor.")


Scratch = Callable[..., torch.Tensor]


def _fresh(key: object, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty_like(like, dtype=dtype)


def _rows(x: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    """The vectors the cosines are taken over: the flattened tensor, or its rows (a 1-D tensor: one row)."""
    if not filter_wise:
        return x.reshape(-1)
    return x.unsqueeze(0) if x.dim() == 1 else x


def interpolation_ratio(base: torch.Tensor, weights: list[torch.Tensor], filter_wise: bool,
                        scratch: Scratch = _fresh) -> torch.Tensor:
    """t per tensor (shape (1,)) or per row (shape (rows, 1)), from the offsets' mean pairwise cosine."""
    origin = _rows(base, filter_wise)
    offsets = [torch.sub(_rows(w, filter_wise), origin, out=scratch(("offset", i), origin))
               for i, w in enumerate(weights)]
    norms = [torch.linalg.vector_norm(d, dim=-1) for d in offsets]
    product = scratch("product", origin)
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            dot = torch.mul(offsets[i], offsets[j], out=product).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=_NORM_FLOOR)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(weights)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < _SINGULAR
    ratio = (n * cos) / torch.where(singular, torch.ones_like(denominator), denominator)
    return torch.where(singular, torch.zeros_like(ratio), ratio)


@register
class ModelStock(MergeMethod):
    """θ = t · mean_i θ_i + (1 − t) θ0, t = N cos θ / (1 + (N − 1) cos θ)."""

    name = "model_stock"
    paper = "arXiv:2403.19522"
    kind = "weights"
    requires_base = True
    Parameters = ModelStockParameters
    min_models = 2
    # a NaN/Inf input makes its offset's dot product NaN/Inf, so t and every output entry non-finite:
    # the engine checks the output alone (inputs only to name the culprit)
    nonfinite_propagates = True

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None
        filter_wise = bool(inputs.params.filter_wise)
        base = _rows(inputs.base, filter_wise)
        t = interpolation_ratio(inputs.base, inputs.tensors, filter_wise, inputs.scratch)
        # Into reused buffers, in mergekit's order: t · (Σ θ_i / N) + (1 − t) · θ0 (same roundings).
        merged = inputs.scratch("merged", base).copy_(_rows(inputs.tensors[0], filter_wise))
        for w in inputs.tensors[1:]:
            merged.add_(_rows(w, filter_wise))
        merged.div_(len(inputs.tensors)).mul_(t)
        merged.add_(torch.mul(base, 1 - t, out=inputs.scratch("product", base)))
        return merged.reshape(inputs.base.shape)

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "filter_wise": self.params.filter_wise}
