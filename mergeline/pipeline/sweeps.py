"""What a params file sweeps: a merge method's grid, and the edits beside addition (negation, analogy).

Each list is swept on the validation split and the rule of its experiment picks a point, which is
then scored on test: the best validation score per method for addition (``merge.methods``), the
control rule of the task-arithmetic paper for negation (``negation``), the best validation accuracy
on the analogy's target task for analogy (``analogy``). The rules: :mod:`mergeline.pipeline.edits`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# NaN/Inf are refused in every float field (weight_decay: .inf would pass ``ge=0``).
# Frozen: the params a run validated are the values every stage uses; nothing edits them on the way.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
Lambda = Annotated[float, Field(ge=-3.0, le=3.0, description="a scaling coefficient in [-3, 3]")]


class _Strict(BaseModel):
    model_config = STRICT


class MethodSweep(_Strict):
    """Grid of one method. Lists are swept; the best point on validation wins."""

    lambdas: list[float] = Field(default_factory=lambda: [1.0], description="scaling coefficients λ")
    densities: list[float] | None = Field(None, description="kept fraction (methods that sweep density)")
    grid: dict[str, list[float]] = Field(
        default_factory=dict, description="further swept parameters {name: values} (those the method's pipeline "
        "entry lists in sweeps, e.g. tall_mask_lambda)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra method parameters")

    @field_validator("lambdas")
    @classmethod
    def _lambda_range(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("needs at least one value")
        for value in values:
            if not -3.0 <= value <= 3.0:
                raise ValueError(f"λ={value} is out of range [-3, 3]")
        return values

    @field_validator("densities")
    @classmethod
    def _density_range(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and not values:
            raise ValueError("needs at least one value (or leave densities out)")
        for value in values or []:
            if not 0.0 < value <= 1.0:
                raise ValueError(f"density={value} is out of range (0, 1]")
        return values

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[float]]) -> dict[str, list[float]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: needs at least one value")
            if (bad := _non_finite(values, key)) is not None:
                raise ValueError(f"{bad}: must be a finite number")
        return grid

    @field_validator("options")
    @classmethod
    def _finite_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        bad = _non_finite(options)
        if bad is not None:
            raise ValueError(f"{bad}: must be a finite number")
        return options


def _non_finite(value: Any, where: str = "") -> str | None:
    """The dotted key of the first NaN/Inf inside ``value`` (dicts and lists), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(value)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


class NegationParams(_Strict):
    """Task negation (forgetting): θ = θ0 − λ·v_t for each target task t, one method's vector v_t at a time.

    Each point is scored on validation on the target task and the control set only; λ (and density)
    follow the control rule (:func:`mergeline.pipeline.edits.pick_negation`).
    """

    tasks: list[str] = Field(default_factory=list, description="training tasks to forget (empty: no negation)")
    control_ratio: float = Field(0.95, gt=0, le=1, description="a point qualifies when its validation control "
                                 "accuracy is ≥ control_ratio × the base model's")
    methods: dict[str, MethodSweep] = Field(
        default_factory=lambda: {"task_arithmetic": MethodSweep()},
        description="methods whose task vector is negated, each with its grid (a method with a per-model weight)")

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError("duplicate task names")
        return tasks

    @field_validator("methods")
    @classmethod
    def _some(cls, methods: dict[str, MethodSweep]) -> dict[str, MethodSweep]:
        if not methods:
            raise ValueError("needs at least one method")
        return methods


class AnalogyParams(_Strict):
    """Task analogy "A is to B as C is to D": τ_D ≈ τ_C + μ (τ_B − τ_A), so θ = θ0 + λ (τ_C + μ τ_B − μ τ_A)
    edits the model towards D without D's vector.

    A, B, C and D are training tasks. Three settings are scored on D's test split, each with its λ
    (and μ) chosen on D's validation split: C alone (transfer), the analogy, and τ_D itself (oracle,
    the best an analogy can approach). D's vector is used by the oracle only.
    """

    a: str = Field(description="task A (e.g. language modelling on domain 1)")
    b: str = Field(description="task B (the same kind of task as A, on domain 2)")
    c: str = Field(description="task C (the task of interest, on domain 1)")
    d: str = Field(description="task D (the task of interest on domain 2: the target)")
    lambdas: list[Lambda] = Field(default_factory=lambda: [0.5, 1.0], min_length=1, description="λ values")
    mus: list[Lambda] = Field(default_factory=lambda: [1.0], min_length=1, description="μ of the pair τ_B − τ_A")

    @model_validator(mode="after")
    def _four_tasks(self) -> "AnalogyParams":
        if len({self.a, self.b, self.c, self.d}) != 4:
            raise ValueError("a, b, c and d must be four different tasks")
        return self


__all__ = ["AnalogyParams", "Lambda", "MethodSweep", "NegationParams", "STRICT"]
