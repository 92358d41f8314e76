"""Iso-CTS: isotropic merging in common and task-specific subspaces (Marczak et al., "No Task Left
Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", arXiv 2502.04959).

Per matrix (2-D tensor, see ``_spectral``), with task vectors τ_t (t = 1..T), M = Σ_t τ_t, r = min(m, n):

    c = int(r · f),  then c ← r − round((r − c)/T) · T   (so the task-specific part divides evenly),
    p = (r − c) / T
    common:  the top c singular triplets (U_c, s_c, V_c) of M
    task t:  the top p singular triplets of τ_t − U_c U_cᵀ τ_t (its part outside the common subspace)
    U = [task 1 … task T, common] (r columns), σ and Vᵀ likewise
    Δ = U⊥ (mean(σ) · I) V⊥ᵀ       (U⊥, V⊥ᵀ: nearest orthogonal matrices, from their SVDs)
Other tensors: Δ = mean_t τ_t.   θ = θ0 + λ Δ.

Follows the authors' code (danielm1405/iso-merging, ``src/utils/iso.py``, ``iso_cts``): round is
Python's (half to even), the task blocks come before the common block, the mean is over the r
concatenated singular values, λ scales the whole merged vector. Defaults: ``lambda`` 1,
``common_space_fraction`` f = 0.8, ``averaged_matrices`` [text_projection]. No per-model parameters.
Departure: an SVD that does not converge in float32 is taken in float64 (``_spectral.thin_svd``) where
the authors' code stops with an error (seen on 2 of SmolLM2-135M's 210 residual matrices).
"""

from __future__ import annotations

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._spectral import SpectralMethod, SpectralParameters, nearest_orthogonal, thin_svd
from mergeline.methods.base import PipelineEntry, TensorInputs
from mergeline.methods.iso_c import summed


class IsoCtsParameters(SpectralParameters):
    common_space_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="Share f of the rank given to the common subspace of Σ_t τ_t."
    )


def subspace_sizes(rank: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(c, p): the common subspace's size and each task's, with c + T·p = r."""
    common = int(rank * fraction)
    common = rank - round((rank - common) / tasks) * tasks
    return common, int((rank - common) / tasks)


def iso_cts_merge(taus: list[torch.Tensor], fraction: float, name: str = "") -> torch.Tensor:
    total = summed(taus)
    rows, cols = total.shape
    rank = min(rows, cols)
    common, per_task = subspace_sizes(rank, len(taus), fraction)
    if common < 0:  # the rounding gave the tasks more directions than the rank has
        raise MergelineError(f"tensor {name!r}: common_space_fraction {fraction} leaves no common subspace for rank "
                             f"{rank} and {len(taus)} models; raise it")
    u, s, vt = thin_svd(total, name)
    u_c, s_c, vt_c = u[:, :common], s[:common], vt[:common, :]
    u_cat, s_cat, vt_cat = total.new_zeros(rows, rank), total.new_zeros(rank), total.new_zeros(rank, cols)
    for t, tau in enumerate(taus):
        u_t, s_t, vt_t = thin_svd(tau - u_c @ (u_c.T @ tau), name)
        u_cat[:, t * per_task:(t + 1) * per_task] = u_t[:, :per_task]
        s_cat[t * per_task:(t + 1) * per_task] = s_t[:per_task]
        vt_cat[t * per_task:(t + 1) * per_task, :] = vt_t[:per_task, :]
    start = len(taus) * per_task
    u_cat[:, start:start + common] = u_c
    s_cat[start:start + common] = s_c
    vt_cat[start:start + common, :] = vt_c
    return (nearest_orthogonal(u_cat, name) * s_cat.mean()) @ nearest_orthogonal(vt_cat, name)


@register
class IsoCts(SpectralMethod):
    """θ = θ0 + λ · U⊥ mean(σ) V⊥ᵀ over the common and task-specific subspaces, per matrix."""

    name = "iso_cts"
    paper = "arXiv:2502.04959"
    Parameters = IsoCtsParameters
    pipeline = (PipelineEntry(short="isocts", sweeps=("lambda", "common_space_fraction")),)

    def matrix_rule(self, taus: list[torch.Tensor], inputs: TensorInputs) -> torch.Tensor:
        return iso_cts_merge(taus, float(inputs.params.common_space_fraction), inputs.name)
