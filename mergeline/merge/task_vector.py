"""Task vectors as pure functions on state dicts (Ilharco et al., arXiv 2212.04089).

    τ = θ_ft − θ0          add: Σ_i τ_i        negate: −τ        scale: λτ
    analogy(a, b, c) = c + (b − a)      ("a is to b as c is to ?")
    apply: θ = θ0 + λτ

A state dict is any ``Mapping[str, Tensor]``. Only floating-point tensors make a task vector: integer
and bool buffers (position ids, counters) are skipped, as in the official code. Differences are computed
in float32 (float64 stays float64) so bf16 weights do not lose the small deltas. A vector that lacks a
key means "no change" for it: ``add`` takes the union of keys and ``apply`` leaves other base tensors
as they are.  Shape mismatches raise :class:`MergelineError` naming the tensor.
"""

from __future__ import annotations

from typing import Mapping

import torch

from mergeline.errors import MergelineError

TaskVector = dict[str, torch.Tensor]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_shape(name: str, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise MergelineError(f"tensor {name!r}: shape {tuple(a.shape)} != {tuple(b.shape)} ({what})")


def extract(finetuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> TaskVector:
    """τ = θ_ft − θ0 for every floating-point tensor of ``finetuned`` (float32 or float64)."""
    vector: TaskVector = {}
    for name, ft in finetuned.items():
        if not ft.is_floating_point():
            continue
        if name not in base:
            raise MergelineError(f"tensor {name!r}: in the fine-tuned model but not in the base model")
        b = base[name]
        _check_shape(name, ft, b, "fine-tuned vs base")
        dtype = _compute_dtype(ft, b)
        vector[name] = ft.to(dtype) - b.to(dtype)
    return vector


def add(*vectors: Mapping[str, torch.Tensor]) -> TaskVector:
    """Σ_i τ_i over the union of keys (a missing key contributes 0)."""
    total: TaskVector = {}
    for vector in vectors:
        for name, value in vector.items():
            if name in total:
                _check_shape(name, total[name], value, "adding task vectors")
                total[name] = total[name] + value.to(total[name].dtype)
            else:
                total[name] = value.clone()
    return total


def scale(vector: Mapping[str, torch.Tensor], lam: float) -> TaskVector:
    """λ·τ."""
    return {name: value * lam for name, value in vector.items()}


def negate(vector: Mapping[str, torch.Tensor]) -> TaskVector:
    """−τ (forgetting)."""
    return {name: -value for name, value in vector.items()}


def analogy(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], c: Mapping[str, torch.Tensor]
) -> TaskVector:
    """τ_d = τ_c + (τ_b − τ_a): "a is to b as c is to d"."""
    return add(c, b, negate(a))


def apply(
    base: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor], lam: float = 1.0
) -> dict[str, torch.Tensor]:
    """θ = θ0 + λτ, in each base tensor's dtype; base tensors the vector lacks are returned unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name in vector:
        if name not in base:
            raise MergelineError(f"tensor {name!r}: in the task vector but not in the base model")
    for name, b in base.items():
        if name not in vector:
            out[name] = b
            continue
        v = vector[name]
        _check_shape(name, b, v, "base vs task vector")
        if not b.is_floating_point():
            raise MergelineError(f"tensor {name!r}: base tensor is {b.dtype}, cannot add a task vector")
        dtype = _compute_dtype(b, v)
        out[name] = (b.to(dtype) + lam * v.to(device=b.device, dtype=dtype)).to(b.dtype)
    return out
