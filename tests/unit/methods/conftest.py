"""A tiny in-test driver that runs a merge method through the base.py contract (no engine needed)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from mergeline.merge.layers import layer_index
from mergeline.methods import get_method
from mergeline.methods.base import MergeMethod, TensorInputs

Vectors = dict[str, list[torch.Tensor | None]]


def drive(
    method: str | type[MergeMethod],
    tensors: Vectors,
    *,
    base: dict[str, torch.Tensor] | None = None,
    params: dict[str, Any] | None = None,
    model_params: list[dict[str, Any]] | None = None,
    model_inputs: dict[str, list[dict[str, torch.Tensor] | None]] | None = None,
    global_inputs: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], MergeMethod]:
    """Run ``method`` over ``tensors`` ({name: [model 0's tensor, model 1's, ...]}, None = model lacks it).

    Does what the engine promises: validates the config, runs every statistics pass over every tensor,
    then ``merge_tensor`` per tensor. Returns (merge_tensor outputs by name, report(), the method).
    For kind "delta" the tensors are task vectors and the outputs are merged deltas (base not added).
    """
    cls = get_method(method) if isinstance(method, str) else method
    n_models = len(next(iter(tensors.values())))
    p = cls.Parameters.model_validate(params or {})
    mps = [cls.PerModel.model_validate(m) for m in (model_params or [{} for _ in range(n_models)])]
    instance = cls(p, mps)

    def inputs_for(name: str) -> TensorInputs:
        present = [i for i, t in enumerate(tensors[name]) if t is not None]
        extra = {
            key: [(values[i] or {}).get(name) for i in present] for key, values in (model_inputs or {}).items()
        }
        return TensorInputs(
            name=name,
            base=None if base is None else base.get(name),
            tensors=[tensors[name][i] for i in present],  # type: ignore[misc]
            model_index=present,
            params=p,
            model_params=[mps[i] for i in present],
            layer=layer_index(name),
            model_inputs=extra,
            global_inputs={key: values.get(name) for key, values in (global_inputs or {}).items()},
        )

    for pass_index in range(instance.statistics_passes()):
        for name in tensors:
            instance.accumulate(inputs_for(name), pass_index)
        instance.finalize_statistics(pass_index)
    merged = {name: instance.merge_tensor(inputs_for(name)) for name in tensors}
    return merged, instance.report(), instance


@pytest.fixture
def run_method() -> Callable[..., tuple[dict[str, torch.Tensor], dict[str, Any], MergeMethod]]:
    """The driver :func:`drive`, as a fixture (conftest modules are not importable by name)."""
    return drive


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.fixture
def vec() -> Callable[..., torch.Tensor]:
    """vec(1, 2, 3) -> float32 tensor."""
    return t
