"""STA: Selective Task Arithmetic (Tian et al., "Beyond Task Vectors: Selective Task Arithmetic Based on
Importance Metrics", arXiv 2411.16139).  Merge side; the importance scores come from
``mergeline.importance`` (per-model input ``importance``: one float tensor per weight, same shape).

    Ĩ_t = I_t / N_t                 N_t = Σ I_t (``sum``), max I_t (``max``) or 1 (``none``), over the model
    M_t = 1[Ĩ_t in the top-ρ_t share]  (``select: topk``)   or   1[Ĩ_t ≥ η]  (``select: threshold``)
    θ = θ0 + λ Σ_t w_t (M_t ⊙ τ_t)      (w_t < 0: forget only the important coordinates of task t)

The formula is METHODS.md §3's inferred reading (no official code; check paper §3).  Defaults:
normalize ``sum``, select ``topk``, scope ``global`` (top ρ over the whole model, exact two-pass
threshold; entries tied with the k-th largest score are all kept), ``lambda`` 1, ``weight`` 1.  With
``scope: tensor`` the top-k keeps exactly int(ρ·n) entries per tensor (ties: lowest flat index).
Scores are used as magnitudes (|I|).  A top-k is unchanged by the per-task normalisation, which only
matters for ``threshold``.  Overlapping masks are summed, with no sign election.

``density_of`` (scope global): ``trainable`` (default) takes ρ of the entries the fine-tune trained,
i.e. of the tensors whose task vector is not all zero, and leaves the untrained tensors (a frozen
embedding) out of the ranking; ``all`` counts every entry (a frozen 28M-entry embedding then makes
ρ = 0.1 keep about 12.7% of SmolLM2's trained entries).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import LambdaParameters, OptionalWeightModel, density_field
from mergeline.methods._global_topk import GlobalTopK
from mergeline.methods._sparsify import keep_count, magnitude_mask
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, PipelineEntry, TensorInputs


class StaParameters(LambdaParameters):
    normalize: Literal["sum", "max", "none"] = Field(
        "sum", description="Per-task normalisation of the importance over the whole model."
    )
    select: Literal["topk", "threshold"] = Field(
        "topk", description="Keep the top-ρ share of scores ('topk') or scores ≥ threshold η ('threshold')."
    )
    scope: Literal["global", "tensor"] = Field(
        "global", description="Top-k over the whole model ('global') or per tensor ('tensor')."
    )
    threshold: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="η for select: threshold, on the normalised scores."
    )
    density_of: Literal["trainable", "all"] = Field(
        "trainable", description="Global top-k: ρ of the trained entries (tensors with a non-zero τ) or of all."
    )

    @model_validator(mode="after")
    def _threshold_given(self) -> "StaParameters":
        if self.select == "threshold" and self.threshold is None:
            raise ValueError("threshold: required when select is 'threshold'")
        return self


class StaModel(OptionalWeightModel):
    density: float = density_field(0.1)
    importance: str | None = Field(
        None, description="Path of this task's importance scores (safetensors, same tensor names as the model)."
    )


@register
class SelectiveTaskArithmetic(MergeMethod):
    """θ = θ0 + λ Σ_t w_t (M_t ⊙ τ_t), M_t from the task's normalised importance."""

    name = "sta"
    paper = "arXiv:2411.16139"
    Parameters = StaParameters
    PerModel = StaModel
    model_inputs = ("importance",)
    pipeline = (PipelineEntry(short="sta", importance=True, sweeps=("lambda", "density")),)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._global = GlobalTopK() if params.select == "topk" and params.scope == "global" else None
        self._needs_norm = params.select == "threshold" and params.normalize != "none"
        self._norm: dict[int, float] = {}
        self._density: dict[int, float] = {}
        self._kept: dict[int, int] = {}
        self._total: dict[int, int] = {}

    def statistics_passes(self) -> int:
        if self._global is not None:
            return GlobalTopK.passes
        return 1 if self._needs_norm else 0

    def _scores(self, inputs: TensorInputs, position: int) -> torch.Tensor:
        model = inputs.model_index[position]
        scores = inputs.model_inputs.get("importance", [None] * len(inputs.tensors))[position]
        if scores is None:
            raise MergelineError(f"tensor {inputs.name!r}: no importance score for model {model}")
        if scores.shape != inputs.tensors[position].shape:
            raise MergelineError(
                f"tensor {inputs.name!r}: importance of model {model} has shape {tuple(scores.shape)}, "
                f"task vector has {tuple(inputs.tensors[position].shape)}"
            )
        return scores.to(device=inputs.tensors[position].device, dtype=torch.float32).abs()

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:
        for position, (model, mp) in enumerate(zip(inputs.model_index, inputs.model_params)):
            scores = self._scores(inputs, position)
            if self._global is not None:
                if self._density.setdefault(model, float(mp.density)) != float(mp.density):
                    raise MergelineError(
                        f"tensor {inputs.name!r}: scope global needs one density per model (model {model})"
                    )
                if inputs.params.density_of == "all" or bool(inputs.tensors[position].any()):
                    self._global.add(model, scores, pass_index, inputs.name)
            elif self.params.normalize == "sum":
                self._norm[model] = self._norm.get(model, 0.0) + float(scores.double().sum())
            else:
                self._norm[model] = max(self._norm.get(model, 0.0), float(scores.max()) if scores.numel() else 0.0)

    def finalize_statistics(self, pass_index: int) -> None:
        if self._global is not None:
            counts = {m: keep_count(d, self._global.count(m)) for m, d in self._density.items()}
            self._global.finalize(pass_index, counts)

    def _mask(self, inputs: TensorInputs, position: int) -> torch.Tensor:
        scores = self._scores(inputs, position)
        model = inputs.model_index[position]
        p = inputs.params
        if p.select == "threshold":
            norm = self._norm.get(model, 1.0) if p.normalize != "none" else 1.0
            return scores / (norm if norm > 0 else 1.0) >= p.threshold
        if self._global is not None:
            if p.density_of == "trainable" and not bool(inputs.tensors[position].any()):
                return torch.zeros_like(scores, dtype=torch.bool)  # not ranked: nothing selected
            return self._global.mask(model, scores)
        return magnitude_mask(scores, float(inputs.model_params[position].density))

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        result = torch.zeros_like(inputs.tensors[0])
        for position, (delta, model, mp) in enumerate(
            zip(inputs.tensors, inputs.model_index, inputs.model_params)
        ):
            mask = self._mask(inputs, position)
            self._kept[model] = self._kept.get(model, 0) + int(mask.sum())
            self._total[model] = self._total.get(model, 0) + mask.numel()
            result.add_(delta * mask.to(delta.dtype), alpha=float(mp.weight))
        lam = float(inputs.params.lambda_)
        return result * lam if lam != 1 else result

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.name,
            "lambda": self.params.lambda_,
            "normalize": self.params.normalize,
            "select": self.params.select,
            "scope": self.params.scope,
            "threshold": self.params.threshold,
            "models": [mp.model_dump() for mp in self.model_params],
            "kept_fraction": {str(m): self._kept[m] / max(1, self._total[m]) for m in sorted(self._kept)},
        }
        if self._norm:
            out["normalizer"] = {str(m): v for m, v in sorted(self._norm.items())}
        if self._global is not None:
            out["global_threshold"] = {str(m): v for m, v in sorted(self._global.thresholds.items())}
        return out
