"""RegMean: regression mean (Jin, Ren, Preotiuc-Pietro, Cheng, "Dataless Knowledge Fusion by Merging Weights
of Language Models", ICLR 2023, arXiv 2212.09849).

For each linear layer y = x W (x-orientation; torch stores Wᵀ, shape (out, in)), with X_t the inputs the
layer sees in model t on task t's data and G_t = X_tᵀ X_t (d_in × d_in):

    G̃_t = α G_t + (1 − α) diag(G_t)                       α = ``reduce_non_diagonal_ratio``
    W*  = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_t

which is the minimiser of Σ_t ‖X_t W − X_t W_t‖² when α = 1 (then the closed form is the least-squares
solution). α = 0 leaves diagonal Gram matrices: each input row j of W* is the average of the models'
rows weighted by their input energies G_t[j, j]. Every other tensor (embeddings, norms, biases, and any
matrix without a Gram matrix) is the simple mean of the models, as in the authors' code.

The Gram matrices come from the compute-importance stage (``mergeline.importance.gram``: forward hooks on
each fine-tuned model over its task's calibration examples, one matrix per ``nn.Linear`` weight, keyed
by the weight's tensor name, divided by the number of examples; GPT-2's Conv1D layers are refused
there). Layers that read one input (q/k/v, gate/up) share one stored matrix, the other names being
aliases in the file's header, which the engine resolves when it looks a weight's matrix up
(``mergeline.io.tensor_aliases``; a bad alias is refused there, naming file and tensor). Per model,
``gram`` names that safetensors file: there is no RegMean without them. A matrix whose Gram matrix some files hold and
others lack, a Gram matrix of the wrong shape or with NaN/Inf is refused (one line naming file and tensor).

The merge works on task vectors (kind "delta"): W* − W0 = (Σ G̃_t)⁻¹ Σ G̃_t (W_t − W0) exactly, and
the small deltas keep the solve's rounding small. Numerics: the system is solved in float64 by a
Cholesky factorisation of Σ G̃_t (symmetric positive semi-definite). When it is singular (an input
dimension no example ever activates, e.g. a zero row of an embedding-fed layer), a ridge ε = 1e-6 ·
mean(diag Σ G̃_t) is added, pulling the undetermined directions to the mean of the models:
(Σ G̃_t + T ε I) W* = Σ G̃_t W_t + ε Σ_t W_t; the report lists those tensors. Defaults: α = 0.95
(FusionBench's ``reduce_non_diagonal_ratio``); no per-model weights and no λ (the closed form has none).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, PipelineEntry, TensorInputs

_RIDGE = 1e-6


class RegMeanParameters(MethodParameters):
    reduce_non_diagonal_ratio: float = Field(
        0.95, ge=0.0, le=1.0,
        description="α: the off-diagonal entries of each Gram matrix are multiplied by α (1: exact least "
                    "squares, 0: diagonal Gram matrices).",
    )


class RegMeanModel(ModelParameters):
    gram: str = Field(
        description="Path of this model's Gram matrices (safetensors: X_tᵀX_t per linear weight, keyed by "
                    "the weight's tensor name), written by the compute-importance stage."
    )


def shrink_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α G + (1 − α) diag(G) (a new tensor)."""
    shrunk = gram * alpha
    shrunk.diagonal().copy_(gram.diagonal())
    return shrunk


def regmean_solve(weights: list[torch.Tensor], grams: list[torch.Tensor], alpha: float
                  ) -> tuple[torch.Tensor, bool]:
    """W* = (Σ G̃_t)⁻¹ Σ G̃_t W_t in torch's (out, in) layout, computed in float64.

    Returns W* in the weights' dtype and whether the ridge was needed (Σ G̃_t singular).
    """
    total = torch.zeros_like(grams[0], dtype=torch.float64)
    rhs = torch.zeros(weights[0].shape[1], weights[0].shape[0], dtype=torch.float64, device=weights[0].device)
    for w, g in zip(weights, grams):
        shrunk = shrink_off_diagonal(g.to(torch.float64), alpha)
        total.add_(shrunk)
        rhs.add_(shrunk @ w.to(torch.float64).T)
    factor, info = torch.linalg.cholesky_ex(total)
    ridged = bool(info.item() != 0)
    if ridged:
        eps = _RIDGE * float(total.diagonal().mean())
        if eps <= 0:  # no input was ever seen: nothing tells the models apart
            return mean_of(weights), True
        total.diagonal().add_(len(weights) * eps)
        for w in weights:
            rhs.add_(w.to(torch.float64).T, alpha=eps)
        factor = torch.linalg.cholesky(total)
    return torch.cholesky_solve(rhs, factor).T.to(weights[0].dtype), ridged


def mean_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    total = tensors[0].clone()
    for t in tensors[1:]:
        total.add_(t)
    return total.div_(len(tensors))


@register
class RegMean(MergeMethod):
    """W* = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_t per linear layer, the mean elsewhere."""

    name = "regmean"
    paper = "arXiv:2212.09849"
    kind = "delta"
    requires_base = True
    Parameters = RegMeanParameters
    PerModel = RegMeanModel
    model_inputs = ("gram",)
    pipeline = (PipelineEntry(short="regmean", gram=True, sweeps=("reduce_non_diagonal_ratio",)),)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._solved = 0
        self._averaged = 0
        self._ridged: list[str] = []

    def _grams(self, inputs: TensorInputs) -> list[torch.Tensor] | None:
        """Each model's checked Gram matrix of this tensor, or None when no file has one."""
        found = inputs.model_inputs.get("gram", [None] * len(inputs.tensors))
        if all(g is None for g in found):
            return None
        grams = []
        for position, gram in enumerate(found):
            where = inputs.model_params[position].gram
            if gram is None:
                raise MergelineError(f"{where}: no Gram matrix {inputs.name!r} (the other models' files have one)")
            weight = inputs.tensors[position]
            expected = (weight.shape[-1], weight.shape[-1])
            if weight.dim() != 2 or tuple(gram.shape) != expected:
                raise MergelineError(
                    f"{where}: Gram matrix {inputs.name!r} has shape {list(gram.shape)}, the weight "
                    f"{list(weight.shape)} needs {list(expected) if weight.dim() == 2 else 'none (not a matrix)'}"
                )
            if not bool(torch.isfinite(gram).all()):
                raise MergelineError(f"{where}: Gram matrix {inputs.name!r} contains NaN or Inf")
            grams.append(gram)
        return grams

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        grams = self._grams(inputs)
        if grams is None:
            self._averaged += 1
            return mean_of(inputs.tensors)
        merged, ridged = regmean_solve(inputs.tensors, grams, float(inputs.params.reduce_non_diagonal_ratio))
        self._solved += 1
        if ridged:
            self._ridged.append(inputs.name)
        return merged

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "reduce_non_diagonal_ratio": self.params.reduce_non_diagonal_ratio,
                "regmean_matrices": self._solved, "averaged_tensors": self._averaged, "ridged": self._ridged}
