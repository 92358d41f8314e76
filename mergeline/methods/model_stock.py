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
order, so results are bit-equal to mergekit's on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

_NORM_FLOOR = 1e-6
_SINGULAR = 1e-6


class ModelStockParameters(MethodParameters):
    filter_wise: bool = Field(False, description="One t per row (last dim) instead of one per tensor.")


def interpolation_ratio(base: torch.Tensor, weights: list[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """t per tensor (shape (1,)) or per row (shape (rows, 1)), from the offsets' mean pairwise cosine."""
    def rows(x: torch.Tensor) -> torch.Tensor:
        if not filter_wise:
            return x.reshape(-1)
        return x.unsqueeze(0) if x.dim() == 1 else x

    offsets = [rows(w) - rows(base) for w in weights]
    norms = [torch.linalg.vector_norm(d, dim=-1) for d in offsets]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            dot = (offsets[i] * offsets[j]).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=_NORM_FLOOR)).clamp(-1, 1))
    del offsets
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

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None
        base, weights = inputs.base, inputs.tensors
        filter_wise = bool(inputs.params.filter_wise)
        t = interpolation_ratio(base, weights, filter_wise)
        shaped = (lambda x: x.unsqueeze(0) if x.dim() == 1 else x) if filter_wise else (lambda x: x.reshape(-1))
        average = shaped(weights[0]).clone()
        for w in weights[1:]:
            average.add_(shaped(w))
        average.div_(len(weights))
        return (t * average + (1 - t) * shaped(base)).reshape(base.shape)

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "filter_wise": self.params.filter_wise}
