"""Parameter fields shared by several methods, so every method validates them the same way.

Each field carries a description (shown in config errors and docs) and its range, so a bad value fails
when the config is read, not halfway through a merge. ``lambda`` is a Python keyword: the attribute is
``lambda_`` and the config key is ``lambda`` (alias).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, FiniteFloat

from mergeline.methods.base import MethodParameters, ModelParameters

Consensus = Literal["sum", "count"]


def lambda_field(default: float = 1.0) -> FiniteFloat:
    """The global scaling coefficient λ applied to the merged delta (θ = θ_base + λ·Δ)."""
    return Field(
        default,
        alias="lambda",
        allow_inf_nan=False,
        description="Global scaling coefficient λ: θ = θ_base + λ·Δ (negative values subtract).",
    )


def density_field(default: float = 1.0) -> float:
    return Field(
        default,
        gt=0.0,
        le=1.0,
        description="Fraction of the task vector's entries kept, in (0, 1]; 1 keeps everything.",
    )


class LambdaParameters(MethodParameters):
    lambda_: FiniteFloat = lambda_field()


class TaskArithmeticFamilyParameters(LambdaParameters):
    """mergekit's shared generalized-task-arithmetic parameters (defaults overridden per method)."""

    normalize: bool = Field(
        False, description="Divide the merged delta by the sum of the (agreeing) model weights."
    )
    rescale: bool = Field(
        False,
        description="After sparsifying, rescale each task vector so its L1 norm equals the norm before.",
    )
    int8_mask: bool = Field(
        False, description="Accepted for mergekit YAML compatibility; memory hint only, no effect here."
    )


class WeightedModel(ModelParameters):
    """Per-model ``weight``, required as in mergekit (negative weight = negation / forgetting)."""

    weight: FiniteFloat = Field(description="Coefficient w_i of this model's task vector (finite).")


class OptionalWeightModel(ModelParameters):
    """Per-model ``weight`` for this project's methods, defaulting to 1 (negative = forget)."""

    weight: FiniteFloat = Field(
        1.0, description="Coefficient w_i of this model's task vector (finite; negative forgets)."
    )


class SparseModel(WeightedModel):
    density: float = density_field()
