"""Measurements of the premises the seed papers' methods rest on (not part of any merge).

- MetaGPT (Zhou et al., arXiv 2406.11385) derives λ_t = ‖τ_t‖² / Σ_k ‖τ_k‖² from two assumptions:
  task vectors are nearly orthogonal (:func:`pairwise_cosines`), and each task's loss is locally a
  quadratic bowl around its expert, so along θ0 + ατ_t the loss gap to the expert is
  L_t(θ0 + ατ_t) − L_t(θ_t) ≈ (1 − α)² (L_t(θ0) − L_t(θ_t)) (:func:`loss_along`, :func:`quadratic_gap`).
- TaLoS (Iurada et al., arXiv 2504.02620) assumes the low-sensitivity entries are shared across tasks:
  the overlap of two tasks' masks (``mergeline.finetune.mask_overlap``) should exceed the overlap of
  independent random masks of the same densities (:func:`random_mask_overlap`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import torch

from mergeline.errors import MergelineError

Vector = Mapping[str, torch.Tensor]


def pairwise_cosines(vectors: Mapping[str, Vector]) -> dict[str, float]:
    """cos(τ_a, τ_b) over the whole model (the tensors both share, float64), keyed ``"a|b"``."""
    if len(vectors) < 2:
        raise MergelineError(f"pairwise_cosines: needs two vectors or more, got {len(vectors)}")
    out = {}
    for (name_a, a), (name_b, b) in itertools.combinations(vectors.items(), 2):
        common = sorted(set(a) & set(b))
        if not common:
            raise MergelineError(f"pairwise_cosines: {name_a} and {name_b} share no tensor names")
        dot = sq_a = sq_b = 0.0
        for key in common:
            x, y = a[key].double().reshape(-1), b[key].double().reshape(-1)
            if x.numel() != y.numel():
                raise MergelineError(f"tensor {key}: {x.numel()} entries in {name_a} but {y.numel()} in {name_b}")
            dot, sq_a, sq_b = dot + float(x @ y), sq_a + float(x @ x), sq_b + float(y @ y)
        out[f"{name_a}|{name_b}"] = dot / math.sqrt(sq_a * sq_b) if sq_a > 0 and sq_b > 0 else 0.0
    return out


@torch.no_grad()
def loss_along(
    model: torch.nn.Module,
    base: Vector,
    vector: Vector,
    alphas: Sequence[float],
    loss_fn: Callable[[torch.nn.Module], float],
) -> dict[float, float]:
    """``loss_fn(model)`` with the model's parameters set to θ0 + α·τ for each α (restored to θ0 after).

    ``base`` holds θ0 for every parameter that ``vector`` names; other parameters are left alone.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(vector) - set(params))
    if missing:
        raise MergelineError(f"loss_along: vector tensor {missing[0]} is not a parameter of the model")
    out = {}
    try:
        for alpha in alphas:
            for key, tau in vector.items():
                params[key].copy_(base[key].to(params[key]) + alpha * tau.to(params[key]))
            out[float(alpha)] = float(loss_fn(model))
    finally:
        for key in vector:
            params[key].copy_(base[key].to(params[key]))
    return out


def quadratic_gap(losses: Mapping[float, float]) -> dict[str, dict[str, float] | float]:
    """MetaGPT's quadratic premise along θ0 + ατ: predicted gap (1 − α)²·(L(0) − L(1)) against the observed
    L(α) − L(1) for each α strictly between 0 and 1, and the largest error relative to L(0) − L(1)."""
    if 0.0 not in losses or 1.0 not in losses:
        raise MergelineError("quadratic_gap: needs the losses at α = 0 and α = 1")
    span = losses[0.0] - losses[1.0]
    points = {}
    for alpha in sorted(a for a in losses if 0.0 < a < 1.0):
        predicted, observed = (1 - alpha) ** 2 * span, losses[alpha] - losses[1.0]
        points[f"{alpha:g}"] = {"observed": observed, "predicted": predicted}
    worst = max((abs(p["observed"] - p["predicted"]) for p in points.values()), default=0.0)
    return {"points": points, "span": span, "max_rel_error": worst / abs(span) if span else math.inf}


def random_mask_overlap(
    masks_a: Mapping[str, torch.Tensor], masks_b: Mapping[str, torch.Tensor], per_tensor: bool = True
) -> float:
    """Jaccard overlap expected of independent random masks with the densities of ``masks_a``/``masks_b``:
    E|A∩B| / E|A∪B| (exact to O(1/n)). ``per_tensor``: each tensor keeps its own densities p_i, q_i
    (Σ n_i p_i q_i / Σ n_i (p_i + q_i − p_i q_i)); otherwise one density per mask over all tensors."""
    common = sorted(set(masks_a) & set(masks_b))
    if not common:
        raise MergelineError("random_mask_overlap: the two masks share no tensor names")
    sizes, ones_a, ones_b = [], [], []
    for name in common:
        a, b = masks_a[name], masks_b[name]
        if a.shape != b.shape:
            raise MergelineError(f"mask tensor {name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        sizes.append(a.numel())
        ones_a.append(int(a.bool().sum()))
        ones_b.append(int(b.bool().sum()))
    if not per_tensor:
        sizes, ones_a, ones_b = [sum(sizes)], [sum(ones_a)], [sum(ones_b)]
    inter = union = 0.0
    for n, ka, kb in zip(sizes, ones_a, ones_b):
        p, q = ka / n, kb / n
        inter += n * p * q
        union += n * (p + q - p * q)
    return inter / union if union else 1.0
