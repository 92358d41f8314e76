"""Shared pieces of the spectral methods (TSV-M, Iso-C, Iso-CTS).

As in the authors' code (AntoAndGar/task_singular_vectors, danielm1405/iso-merging), a tensor gets the
matrix rule when it is 2-D and its name contains none of the ``averaged_matrices`` substrings (their
code: ``text_projection``); every other tensor (1-D norms and biases, convolution kernels) is merged by
the plain mean of the task vectors, taken incrementally as theirs is. Embeddings and the LM head are
2-D, so they get the matrix rule.

Every SVD goes through :func:`thin_svd`: LAPACK's float32 divide-and-conquer SVD (torch's CPU default)
does not converge on some real task vectors' matrices (Iso-CTS's residuals outside the common subspace:
2 of SmolLM2-135M's 210 matrices), where the authors' code stops with an error; there, and only there,
the SVD is taken in float64 and cast back, so every other matrix's result is unchanged.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods._fields import LambdaParameters
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, TensorInputs


class SpectralParameters(LambdaParameters):
    averaged_matrices: list[str] = Field(
        default_factory=lambda: ["text_projection"],
        description="Substrings of names of 2-D tensors merged by the mean of the task vectors instead of "
                    "the matrix rule (the authors' code: text_projection).",
    )


def uses_matrix_rule(name: str, tensor: torch.Tensor, averaged: list[str]) -> bool:
    return tensor.dim() == 2 and not any(part in name for part in averaged)


def running_mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """m_1 = x_1, m_i = m_{i−1} + (x_i − m_{i−1}) / i: the mean as the authors accumulate it."""
    mean = tensors[0].clone()
    for i, x in enumerate(tensors[1:], start=2):
        mean.add_((x - mean) / i)
    return mean


def thin_svd(x: torch.Tensor, name: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(x, full_matrices=False)``; where it does not converge, the same in float64, cast
    back to x's dtype; a matrix that fails in float64 too is one error line naming the tensor."""
    try:
        return torch.linalg.svd(x, full_matrices=False)
    except torch.linalg.LinAlgError:
        pass
    try:
        u, s, vt = torch.linalg.svd(x.double(), full_matrices=False)
    except torch.linalg.LinAlgError as exc:
        raise MergelineError(f"tensor {name!r}: its SVD did not converge in float32 nor float64 ({exc})") from exc
    return u.to(x.dtype), s.to(x.dtype), vt.to(x.dtype)


def nearest_orthogonal(x: torch.Tensor, name: str = "") -> torch.Tensor:
    """P Qᵀ from the thin SVD x = P Σ Qᵀ: the (semi-)orthogonal matrix closest to x (Procrustes)."""
    p, _, qt = thin_svd(x, name)
    return p @ qt


class SpectralMethod(MergeMethod):
    """Per tensor: the subclass's matrix rule on matrices, the mean elsewhere; then λ (kind "delta")."""

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._matrices = 0
        self._averaged = 0

    def task_vectors(self, inputs: TensorInputs) -> list[torch.Tensor]:
        """The τ_t the rule works on (default: as given)."""
        return inputs.tensors

    @abstractmethod
    def matrix_rule(self, taus: list[torch.Tensor], inputs: TensorInputs) -> torch.Tensor:
        """Δ of one matrix (a fresh tensor: λ is applied to it in place)."""

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        taus = self.task_vectors(inputs)
        if uses_matrix_rule(inputs.name, taus[0], list(inputs.params.averaged_matrices)):
            self._matrices += 1
            delta = self.matrix_rule(taus, inputs)
        else:
            self._averaged += 1
            delta = running_mean(taus)
        lam = float(inputs.params.lambda_)
        return delta.mul_(lam) if lam != 1 else delta

    def report(self) -> dict[str, Any]:
        return {"method": self.name, **self.params.model_dump(by_alias=True),
                "matrices": self._matrices, "averaged_tensors": self._averaged}
