"""TALL masks and the consensus mask (Wang, Dimitriadis, Ortiz-Jimenez, Fleuret, Frossard, "Localizing
Task Information for Improved Model Merging and Compression", ICML 2024, arXiv 2405.07813).

For task vectors τ_t and a merged multi-task vector τ_MTL (Task Arithmetic's Σ_s τ_s or TIES's):

    m_t = |τ_t| > λ_t · |τ_MTL − τ_t|      (TALL mask of task t: where τ_t dominates the other tasks' share)
    consensus = [Σ_t m_t ≥ k]              (k = 2 drops "selfish" and "catastrophic" weights; k = 0 keeps all)

as the authors' code (nik-dim/tall_masks, ``generate_task_masks``, ``construct_consensus_mask``) with a
strict ">". Their code compares |θ0 − θ_t| with |θ0 + τ_MTL − θ_t| on weights; here the same quantities
are formed from task vectors (equal in exact arithmetic, may differ in the last bit). Every entry is
masked independently, so a tensor can be merged in row blocks.
"""

from __future__ import annotations

from abc import abstractmethod

import threading
from typing import Any

import torch
from pydantic import Field

from mergeline.methods._fields import LambdaParameters
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, TensorInputs


class ConsensusParameters(LambdaParameters):
    consensus_k: int = Field(
        2, ge=0, description="Keep an entry where at least k TALL masks hold it (0: keep all, TA/TIES unmasked)."
    )


class TallModel(ModelParameters):
    tall_mask_lambda: float = Field(
        0.6, ge=0.0, allow_inf_nan=False,
        description="λ_t of this task's TALL mask |τ_t| > λ_t·|τ_MTL − τ_t| (a global value is every model's).",
    )


def tall_masks(taus: list[torch.Tensor], merged: torch.Tensor, lambdas: list[float]) -> list[torch.Tensor]:
    """m_t for every task (bool tensors)."""
    return [tau.abs() > (merged - tau).abs().mul_(lam) for tau, lam in zip(taus, lambdas)]


class ConsensusMethod(MergeMethod):
    """Base of consensus_ta / consensus_ties: Δ = λ · τ_MTL ⊙ consensus(TALL masks)."""

    row_separable = True

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._lock = threading.Lock()  # row blocks are merged by several threads
        self._held: dict[int, int] = {}
        self._kept = 0
        self._total = 0

    @abstractmethod
    def multi_task_vector(self, inputs: TensorInputs) -> torch.Tensor:
        """τ_MTL of this tensor (a fresh tensor)."""

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        merged = self.multi_task_vector(inputs)
        masks = tall_masks(inputs.tensors, merged, [float(mp.tall_mask_lambda) for mp in inputs.model_params])
        votes = torch.zeros_like(merged, dtype=torch.int32)
        for mask in masks:
            votes.add_(mask)
        keep = votes >= int(inputs.params.consensus_k)
        held = [int(mask.sum()) for mask in masks]
        kept = int(keep.sum())
        with self._lock:
            for model, count in zip(inputs.model_index, held):
                self._held[model] = self._held.get(model, 0) + count
            self._kept += kept
            self._total += keep.numel()
        merged.mul_(keep)
        lam = float(inputs.params.lambda_)
        return merged.mul_(lam) if lam != 1 else merged

    def report(self) -> dict[str, Any]:
        total = max(1, self._total)
        return {
            "method": self.name,
            **self.params.model_dump(by_alias=True),
            "tall_mask_lambda": [mp.tall_mask_lambda for mp in self.model_params],
            "tall_mask_fraction": {str(m): n / total for m, n in sorted(self._held.items())},
            "consensus_fraction": self._kept / total,
        }
