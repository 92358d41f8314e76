"""Iso-C: isotropic merging in the common space (Marczak, Magistri, Cygert, Twardowski, Bagdanov,
van de Weijer, "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces",
arXiv 2502.04959).

Per matrix (2-D tensor, see ``_spectral``), with task vectors τ_t (t = 1..T):

    M = Σ_t τ_t = U S Vᵀ (thin SVD),   Δ = U (mean(S) · I) Vᵀ     (every singular value replaced by their mean)
Other tensors: Δ = mean_t τ_t.   θ = θ0 + λ Δ.

Follows the authors' code (danielm1405/iso-merging, ``src/utils/iso.py``): the mean is over all
min(m, n) singular values, and λ scales the whole merged vector, 1-D tensors included. Defaults:
``lambda`` 1, ``averaged_matrices`` [text_projection]. No per-model parameters (theirs has none).
"""

from __future__ import annotations

import torch

from mergeline.methods import register
from mergeline.methods._spectral import SpectralMethod, SpectralParameters, thin_svd
from mergeline.methods.base import PipelineEntry, TensorInputs


def summed(taus: list[torch.Tensor]) -> torch.Tensor:
    total = taus[0].clone()
    for tau in taus[1:]:
        total.add_(tau)
    return total


def iso_c_merge(taus: list[torch.Tensor], name: str = "") -> torch.Tensor:
    u, s, vt = thin_svd(summed(taus), name)
    return (u * s.mean()) @ vt


@register
class IsoC(SpectralMethod):
    """θ = θ0 + λ · U mean(S) Vᵀ of Σ_t τ_t, per matrix."""

    name = "iso_c"
    paper = "arXiv:2502.04959"
    Parameters = SpectralParameters
    pipeline = (PipelineEntry(short="isoc"),)

    def matrix_rule(self, taus: list[torch.Tensor], inputs: TensorInputs) -> torch.Tensor:
        return iso_c_merge(taus, inputs.name)
