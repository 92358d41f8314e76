"""LATA: Layer-Aware Task Arithmetic (Chen et al., "Layer-Aware Task Arithmetic: Disentangling
Task-Specific and Instruction-Following Knowledge", arXiv 2502.20186, Findings of EMNLP 2025).

Config: ``base_model`` = θ_inst (the instruct model that receives the merge), global input
``pretrained_model`` = θ_base (the pretrained LM), ``models`` = experts θ_t fine-tuned from θ_inst.

    ι = θ_inst − θ_base     τ_t = θ_t − θ_inst (the engine's delta)     c_t = τ_t + ι = θ_t − θ_base
    s_t,l = cos(c_t,l, ι_l)  over the concatenation of every tensor of block l (``similarity_unit: layer``)
            or the mean of per-tensor cosines of the block (``similarity_unit: tensor``)
    w_t,l:  threshold    1[s_t,l < δ]                          (δ = 0.95)
            linear_rank  1 − (r_t,l − 1)/(L − 1)               r = rank by ascending s (1 = least similar)
            log_rank     1 − ln(r_t,l)/ln(L)
    θ = θ_inst + λ Σ_t u_t Σ_l w_t,l v_t,l,    v = τ (``apply_to: task_vector``) or c (``complex_vector``)

u_t is the per-model ``weight`` (default 1; −1 with the UA expert gives forgetting).  Weight formulas
and the task-vector default are METHODS.md §4's inferred reading (no official code).  Defaults:
scheme ``threshold``, δ 0.95, similarity_unit ``layer``, apply_to ``task_vector``, non_layer ``keep``
(tensors outside blocks get weight 0: θ_inst's values stay; ``add`` gives them weight 1),
``rescale_weights`` false (true scales each model's w so Σ_l w_t,l = L, letting pure layers be amplified),
``lambda`` 1.  ``delta: median`` sets δ per model to the median of its layer similarities, so about
half of the layers are kept whatever the scale of the cosines (with experts fine-tuned from the base,
every cosine can sit below 0.95 and then LATA = TA); the report's ``delta_used`` gives each model's δ
and ``all_weights_one`` says when the weighting kept every layer at 1.  Equal similarities rank by layer index.  A zero-norm vector has cosine 0.  Norms and dots
are accumulated in float64 in one statistics pass.
"""

from __future__ import annotations

import math
import statistics
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import LambdaParameters, OptionalWeightModel
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, PipelineEntry, TensorInputs


class LataParameters(LambdaParameters):
    pretrained_model: str | None = Field(
        None, description="θ_base: the pre-instruction model; ι = θ_inst − θ_base with θ_inst the base_model."
    )
    scheme: Literal["threshold", "linear_rank", "log_rank"] = Field(
        "threshold", description="Layer weighting: Drop-with-Threshold, Linear- or Logarithmic-Drop-by-Rank."
    )
    delta: Annotated[float, Field(ge=-1.0, le=1.0)] | Literal["median"] = Field(
        0.95, description="δ of scheme threshold: keep layers with similarity < δ ('median': each model's median)."
    )
    similarity_unit: Literal["layer", "tensor"] = Field(
        "layer", description="Cosine over the whole block ('layer') or mean of per-tensor cosines ('tensor')."
    )
    apply_to: Literal["task_vector", "complex_vector"] = Field(
        "task_vector", description="Weight τ_t = θ_t − θ_inst ('task_vector') or c_t = θ_t − θ_base."
    )
    non_layer: Literal["keep", "add"] = Field(
        "keep", description="Tensors outside blocks: keep θ_inst ('keep', weight 0) or add fully ('add')."
    )
    rescale_weights: bool = Field(False, description="Scale each model's layer weights so they sum to L.")


def threshold_for(similarity: dict[int, float], delta: float | str) -> float:
    """δ itself, or the median of the layer similarities for ``delta="median"``."""
    return statistics.median(similarity.values()) if delta == "median" else float(delta)


def layer_weights(similarity: dict[int, float], scheme: str, delta: float | str, rescale: bool) -> dict[int, float]:
    """w_l for one model from its per-layer similarities s_l (see module docstring)."""
    if not similarity:
        return {}
    if scheme == "threshold":
        delta = threshold_for(similarity, delta)
        weights = {l: 1.0 if s < delta else 0.0 for l, s in similarity.items()}
    else:
        order = sorted(similarity, key=lambda l: (similarity[l], l))  # ascending s; ties by layer index
        count = len(order)
        weights = {}
        for rank0, l in enumerate(order):
            if count == 1:
                weights[l] = 1.0
            elif scheme == "linear_rank":
                weights[l] = 1.0 - rank0 / (count - 1)
            else:
                weights[l] = 1.0 - math.log(rank0 + 1) / math.log(count)
    if rescale:
        total = sum(weights.values())
        if total > 0:
            weights = {l: w * len(weights) / total for l, w in weights.items()}
    return weights


@register
class LayerAwareTaskArithmetic(MergeMethod):
    """θ = θ_inst + λ Σ_t u_t Σ_l w_t,l v_t,l with w from cos(c_t,l, ι_l)."""

    name = "lata"
    paper = "arXiv:2502.20186"
    Parameters = LataParameters
    PerModel = OptionalWeightModel
    global_inputs = ("pretrained_model",)
    pipeline = (PipelineEntry(short="lata"),)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        # (model, layer) -> [c·ι, ‖c‖², ‖ι‖²] (layer unit) or [Σ cos, count] (tensor unit), float64
        self._acc: dict[tuple[int, int], list[float]] = {}
        self.similarity: dict[int, dict[int, float]] = {}
        self.weights: dict[int, dict[int, float]] = {}

    def statistics_passes(self) -> int:
        return 1

    def _iota(self, inputs: TensorInputs) -> torch.Tensor:
        pretrained = inputs.global_inputs.get("pretrained_model")
        if pretrained is None or inputs.base is None:
            raise MergelineError(f"tensor {inputs.name!r}: lata needs base_model and pretrained_model for it")
        if pretrained.shape != inputs.base.shape:
            raise MergelineError(
                f"tensor {inputs.name!r}: pretrained_model shape {tuple(pretrained.shape)} "
                f"!= base_model shape {tuple(inputs.base.shape)}"
            )
        return inputs.base - pretrained.to(inputs.base.dtype)

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:
        if inputs.layer is None:
            return  # outside the blocks: not ranked
        iota = self._iota(inputs).double()
        iota_sq = float(iota.square().sum())
        for tau, model in zip(inputs.tensors, inputs.model_index):
            c = tau.double() + iota
            dot, c_sq = float((c * iota).sum()), float(c.square().sum())
            if self.params.similarity_unit == "layer":
                acc = self._acc.setdefault((model, inputs.layer), [0.0, 0.0, 0.0])
                acc[0] += dot
                acc[1] += c_sq
                acc[2] += iota_sq
            else:
                acc = self._acc.setdefault((model, inputs.layer), [0.0, 0.0])
                acc[0] += _cosine(dot, c_sq, iota_sq)
                acc[1] += 1.0

    def finalize_statistics(self, pass_index: int) -> None:
        self.similarity = {}
        for (model, layer), acc in sorted(self._acc.items()):
            s = _cosine(*acc) if len(acc) == 3 else acc[0] / acc[1]
            self.similarity.setdefault(model, {})[layer] = s
        p = self.params
        self.weights = {
            m: layer_weights(sims, p.scheme, p.delta, p.rescale_weights) for m, sims in self.similarity.items()
        }

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        p = inputs.params
        iota = self._iota(inputs) if p.apply_to == "complex_vector" else None
        result = torch.zeros_like(inputs.tensors[0])
        for tau, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
            if inputs.layer is None:
                w = 1.0 if p.non_layer == "add" else 0.0
            else:
                w = self.weights.get(model, {}).get(inputs.layer, 0.0)
            coefficient = float(mp.weight) * w
            if coefficient != 0.0:
                result.add_(tau if iota is None else tau + iota, alpha=coefficient)
        lam = float(p.lambda_)
        return result * lam if lam != 1 else result

    def report(self) -> dict[str, Any]:
        p = self.params
        return {
            "method": self.name,
            "scheme": p.scheme,
            "delta": p.delta,
            "similarity_unit": p.similarity_unit,
            "apply_to": p.apply_to,
            "non_layer": p.non_layer,
            "rescale_weights": p.rescale_weights,
            "lambda": p.lambda_,
            "models": [mp.model_dump() for mp in self.model_params],
            "similarity": {str(m): {str(l): s for l, s in v.items()} for m, v in self.similarity.items()},
            "layer_weights": {str(m): {str(l): w for l, w in v.items()} for m, v in self.weights.items()},
            "delta_used": {str(m): threshold_for(v, p.delta) for m, v in self.similarity.items() if v},
            "all_weights_one": all(w == 1.0 for v in self.weights.values() for w in v.values()),
        }


def _cosine(dot: float, a_sq: float, b_sq: float) -> float:
    if a_sq <= 0.0 or b_sq <= 0.0:
        return 0.0
    return dot / math.sqrt(a_sq * b_sq)
