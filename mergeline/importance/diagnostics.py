"""Per-layer diagnostics of task vectors and importance scores, streamed tensor by tensor.

- :func:`layer_similarities`: LATA's (Chen et al., arXiv 2502.20186; METHODS.md §4) layer cosine
  ``s_l = cos(a_l, b_l)``, each side being the concatenation of every tensor of transformer block l.
- :func:`vector_norms`: MetaGPT's (Zhou et al., arXiv 2406.11385; METHODS.md §6) squared norms
  ``‖τ‖²`` per model, layer or tensor, accumulated in float64 (λ_t = ‖τ_t‖² / Σ_k ‖τ_k‖²).
- :func:`importance_stats`: per-layer summary of importance scores (for MLflow and plots).

Layers come from :func:`mergeline.merge.layers.layer_index`; tensors outside blocks (embeddings, final
norm, LM head) are reported under ``"other"`` where applicable. Vectors are any weights path of
:func:`mergeline.finetune.weights.weight_files` (task-vector folder, .safetensors file, model folder).
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from mergeline.errors import MergelineError
from mergeline.finetune.weights import TensorReader, is_float_code
from mergeline.merge.layers import layer_index

OTHER = "other"


def layer_similarities(vector_a: str | os.PathLike[str], vector_b: str | os.PathLike[str]) -> dict[int, float]:
    """Cosine per transformer block between two vectors, over the tensors they share.

    A block whose vector is all zero on either side gets 0.0 (no direction to compare).
    """
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # dot, |a|², |b|²
    with TensorReader(vector_a) as ra, TensorReader(vector_b) as rb:
        common = sorted(set(ra.keys()) & set(rb.keys()))
        for name in common:
            layer = layer_index(name)
            if layer is None or not is_float_code(ra.dtype_code(name)):
                continue
            a, b = ra.get(name).double().reshape(-1), rb.get(name).double().reshape(-1)
            if a.numel() != b.numel():
                raise MergelineError(f"tensor {name}: {a.numel()} entries in {vector_a} but {b.numel()} in {vector_b}")
            acc = sums[layer]
            acc[0] += float(a @ b)
            acc[1] += float(a @ a)
            acc[2] += float(b @ b)
    if not sums:
        raise MergelineError(f"{vector_a} and {vector_b}: no common transformer-block tensors")
    return {
        layer: (dot / math.sqrt(na * nb) if na > 0 and nb > 0 else 0.0)
        for layer, (dot, na, nb) in sorted(sums.items())
    }


def vector_norms(
    vector_path: str | os.PathLike[str],
    granularity: Literal["model", "layer", "tensor"] = "model",
    exclude: Sequence[str] = (),
) -> dict[str, float]:
    """Squared L2 norms of a vector's float tensors: ``{"model": ‖τ‖²}``, per layer (``"0"``, ``"1"``,
    …, ``"other"``) or per tensor name. ``exclude``: regexes of tensor names left out."""
    if granularity not in ("model", "layer", "tensor"):
        raise MergelineError(f"granularity={granularity!r}: must be model, layer or tensor")
    patterns = [re.compile(p) for p in exclude]
    norms: dict[str, float] = defaultdict(float)
    with TensorReader(vector_path) as reader:
        for name in reader.keys():
            if any(p.search(name) for p in patterns) or not is_float_code(reader.dtype_code(name)):
                continue
            t = reader.get(name).double()
            sq = float((t * t).sum())
            if granularity == "model":
                key = "model"
            elif granularity == "tensor":
                key = name
            else:
                layer = layer_index(name)
                key = OTHER if layer is None else str(layer)
            norms[key] += sq
    return dict(norms)


_SAMPLE = 1 << 16  # entries per summary used for quantiles


def _tensor_stats(t: torch.Tensor) -> tuple[int, float, float, int]:
    # torch's float32 sum is cascaded (pairwise), accurate enough here and far cheaper than float64.
    return t.numel(), float(t.sum()), float(t.max()), int(torch.count_nonzero(t))


def _summary(values: list[torch.Tensor], stats: list[tuple[int, float, float, int]], grand_total: float) -> dict[str, float]:
    n = sum(s[0] for s in stats)
    total = sum(s[1] for s in stats)
    # Quantiles on a fixed-stride sample: deterministic, and torch.quantile sorts (and caps at 16M).
    stride = max(1, n // _SAMPLE)
    sample = torch.cat([v.reshape(-1)[::stride].double() for v in values])
    q = torch.quantile(sample, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {
        "n": n,
        "sum": total,
        "mean": total / max(1, n),
        "max": max(s[2] for s in stats),
        "p50": q[0],
        "p90": q[1],
        "p99": q[2],
        "nonzero": sum(s[3] for s in stats) / max(1, n),
        "share": total / grand_total if grand_total > 0 else 0.0,
    }


def group_by_layer(scores: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Tensor names grouped by block index as a string (``"0"``, ``"1"``, …) then ``"other"``."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in sorted(scores):
        layer = layer_index(name)
        groups[OTHER if layer is None else str(layer)].append(name)
    ordered = sorted((k for k in groups if k != OTHER), key=int) + ([OTHER] if OTHER in groups else [])
    return {k: groups[k] for k in ordered}


def importance_stats(scores: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """``{"total": summary, "layers": {layer: summary}}``; a summary has n, sum, mean, max, p50/p90/p99
    (on a stride sample of about 65k entries), nonzero fraction and ``share`` of the total importance."""
    if not scores:
        raise MergelineError("importance_stats: no scores")
    per_tensor = {name: _tensor_stats(t.detach().float()) for name, t in scores.items()}
    grand = sum(s[1] for s in per_tensor.values())
    layers = {}
    for key, names in group_by_layer(scores).items():
        layers[key] = _summary([scores[n] for n in names], [per_tensor[n] for n in names], grand)
    return {"total": _summary(list(scores.values()), list(per_tensor.values()), grand), "layers": layers}
