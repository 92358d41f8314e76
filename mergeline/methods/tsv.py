"""TSV-M: Task Singular Vectors merging (Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri, Rodolà,
"Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025, arXiv 2412.00081).

Per matrix (a 2-D tensor, see ``_spectral``), with T task vectors τ_t = w_t (θ_t − θ0), r = min(m, n):

    τ_t = U_t Σ_t V_tᵀ (thin SVD),   k = int(r · (1/T))
    U = [U_1[:, :k] … U_T[:, :k] 0],  σ = [σ_1[:k] … σ_T[:k] 0],  Vᵀ = [V_1ᵀ[:k]; …; V_Tᵀ[:k]; 0]   (r slots)
    U⊥ = P_U Q_Uᵀ,  V⊥ᵀ = P_V Q_Vᵀ        (nearest orthogonal matrices, from the SVDs U = P_U S Q_Uᵀ, Vᵀ = …)
    Δ = U⊥ diag(σ) V⊥ᵀ
Other tensors: Δ = mean_t τ_t.   θ = θ0 + λ Δ.

As the authors' code (AntoAndGar/task_singular_vectors, ``compute_and_sum_svd_mem_reduction``): task t's
top k triplets fill slots t·k … (t+1)·k − 1, the slots past T·k stay zero, and k is computed as
int(r · (1/T)) (so a matrix with r < T gets k = 0 and Δ = 0 there). λ scales the whole merged vector.
One departure: a task's triplets beyond its numerical rank (σ ≤ max(m, n)·ε·σ_1, e.g. every triplet of a
tensor the fine-tune left unchanged) are left out of the concatenation. Their σ is 0, so they add
nothing to Δ, but the SVD picks their vectors arbitrarily and the authors' code orthogonalises the other
tasks' vectors against them, which makes Δ depend on that choice.
The per-model ``weight`` (default 1; not in the authors' code) scales τ_t before the SVD, as
FusionBench's per-task α. Defaults: ``lambda`` 1, ``averaged_matrices`` [text_projection].
"""

from __future__ import annotations

from typing import Any

import torch

from mergeline.methods import register
from mergeline.methods._fields import OptionalWeightModel
from mergeline.methods._spectral import SpectralMethod, SpectralParameters, nearest_orthogonal, thin_svd
from mergeline.methods.base import PipelineEntry, TensorInputs


def tsv_merge(taus: list[torch.Tensor], name: str = "") -> torch.Tensor:
    """Δ of one matrix from its task vectors (already weighted)."""
    rows, cols = taus[0].shape
    rank = min(rows, cols)
    k = int(rank * (1 / len(taus)))
    if k == 0:
        return taus[0].new_zeros(rows, cols)
    u_cat, s_cat, vt_cat = taus[0].new_zeros(rows, rank), taus[0].new_zeros(rank), taus[0].new_zeros(rank, cols)
    tolerance = max(rows, cols) * torch.finfo(taus[0].dtype).eps
    for t, tau in enumerate(taus):
        u, s, vt = thin_svd(tau, name)
        # triplets beyond the numerical rank carry σ ≈ 0 and an arbitrary basis: left out (zero columns)
        real = (s[:k] > tolerance * s[0]).to(s.dtype)
        u_cat[:, t * k:(t + 1) * k] = u[:, :k] * real
        s_cat[t * k:(t + 1) * k] = s[:k] * real
        vt_cat[t * k:(t + 1) * k, :] = vt[:k, :] * real[:, None]
    return (nearest_orthogonal(u_cat, name) * s_cat) @ nearest_orthogonal(vt_cat, name)


@register
class TaskSingularVectors(SpectralMethod):
    """θ = θ0 + λ · U⊥ diag(σ) V⊥ᵀ from each task's top 1/T singular triplets (mean for non-matrices)."""

    name = "tsv"
    paper = "arXiv:2412.00081"
    Parameters = SpectralParameters
    PerModel = OptionalWeightModel
    pipeline = (PipelineEntry(short="tsv"),)

    def task_vectors(self, inputs: TensorInputs) -> list[torch.Tensor]:
        return [t if float(mp.weight) == 1.0 else t * float(mp.weight)
                for t, mp in zip(inputs.tensors, inputs.model_params)]

    def matrix_rule(self, taus: list[torch.Tensor], inputs: TensorInputs) -> torch.Tensor:
        return tsv_merge(taus, inputs.name)

    def report(self) -> dict[str, Any]:
        return {**super().report(), "weights": [mp.weight for mp in self.model_params]}
