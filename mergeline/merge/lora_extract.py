"""LoRA out: a model's difference to its base as a PEFT LoRA adapter of a given rank.

For each target matrix W (out × in) of the model and W₀ of the base, the difference Δ = W − W₀ is
replaced by its best rank-r approximation in the Frobenius norm (Eckart–Young), the truncated SVD::

    Δ = U S Vᵀ,   B = U_r √S_r  (out × r),   A = √S_r V_rᵀ  (r × in),   B A ≈ Δ

written with ``lora_alpha = r`` so PEFT's scale α / r is 1 and PEFT's ``merge_and_unload`` gives
W₀ + B A. A matrix with fewer than r rows or columns gets rank min(out, in) through ``rank_pattern``
(and the matching ``alpha_pattern``, so its scale stays 1).

Targets are the 2-D ``*.weight`` tensors of linear layers: embeddings and the output head are left
out (a LoRA of them is a different PEFT layer, and most fine-tunes leave them frozen), as are 1-D
tensors (norms, biases), which a LoRA cannot express. What the adapter cannot carry is reported, per
tensor, as the norm of its difference (``dropped``), so a user sees how much of the fine-tune is lost.

The SVD runs in float32 (float64 for matrices of at most 1,024 entries per side, where it is cheap);
the factors are stored in the model's dtype unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# Name fragments of 2-D weights that are not linear layers (token embeddings, positions, the head).
NON_LINEAR_FRAGMENTS = ("embed", "wte", "wpe", "lm_head", "shared")
_SMALL_SIDE = 1024


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    """True for the weight of a linear layer: a 2-D ``*.weight`` that is not an embedding or the head."""
    return len(shape) == 2 and name.endswith(".weight") and not any(f in name for f in NON_LINEAR_FRAGMENTS)


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, relative error) with B A the best rank-``rank`` approximation of the matrix ``delta``.

    The relative error is ‖Δ − B A‖_F / ‖Δ‖_F, computed from the discarded singular values (0 for a
    zero Δ). ``rank`` is clipped to min(out, in).
    """
    if delta.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(delta.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    work = torch.float64 if max(delta.shape) <= _SMALL_SIDE else torch.float32
    u, s, vh = torch.linalg.svd(delta.to(work), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    b = u[:, :r] * root
    a = root[:, None] * vh[:r]
    total = float(s.square().sum())
    error = math.sqrt(float(s[r:].square().sum()) / total) if total > 0 else 0.0
    return b, a, error


@dataclass
class ExtractReport:
    """Per-tensor outcome of an extraction, for the adapter's report file and the command's summary."""

    rank: int
    errors: dict[str, float] = field(default_factory=dict)       # module -> relative Frobenius error
    ranks: dict[str, int] = field(default_factory=dict)          # module -> rank used
    dropped: dict[str, float] = field(default_factory=dict)      # tensor -> ‖Δ‖_F not carried by the adapter
    delta_norm_sq: float = 0.0                                   # Σ ‖Δ‖² over the targets
    residual_norm_sq: float = 0.0                                # Σ ‖Δ − B A‖² over the targets

    @property
    def relative_error(self) -> float:
        """‖Δ − B A‖_F / ‖Δ‖_F over all target matrices together."""
        return math.sqrt(self.residual_norm_sq / self.delta_norm_sq) if self.delta_norm_sq > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "relative_error": self.relative_error, "modules": len(self.errors),
                "errors": self.errors, "ranks": self.ranks, "dropped": self.dropped}


def extract_lora(
    names: Iterable[str],
    read_pair: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
    rank: int,
    dtype: torch.dtype | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, torch.Tensor], ExtractReport]:
    """LoRA factors of every linear weight among ``names``; ``read_pair(name)`` gives (model, base).

    Returns PEFT's tensor names (``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``) and
    the report. Tensors are read one at a time, so memory is bounded by one matrix and its SVD.
    """
    factors: dict[str, torch.Tensor] = {}
    report = ExtractReport(rank=rank)
    names = list(names)
    for index, name in enumerate(names, 1):
        model, base = read_pair(name)
        delta = model.to(torch.float32) - base.to(torch.float32)
        if not is_linear_weight(name, tuple(delta.shape)):
            norm = float(delta.norm())
            if norm > 0:
                report.dropped[name] = norm
            continue
        b, a, error = low_rank_factors(delta, rank)
        module = name[: -len(".weight")]
        out_dtype = dtype or model.dtype
        factors[f"base_model.model.{module}.lora_A.weight"] = a.to(out_dtype).contiguous()
        factors[f"base_model.model.{module}.lora_B.weight"] = b.to(out_dtype).contiguous()
        report.errors[module], report.ranks[module] = error, a.shape[0]
        norm_sq = float(delta.double().square().sum())
        report.delta_norm_sq += norm_sq
        report.residual_norm_sq += norm_sq * error * error
        if progress is not None:
            progress(f"[{index}/{len(names)}] {module}: rank {a.shape[0]}, relative error {error:.4f}")
    return factors, report


def adapter_config(report: ExtractReport, base_model: str) -> dict[str, Any]:
    """PEFT's ``adapter_config.json`` for the factors of ``report``: scale 1 on every module."""
    modules = sorted(report.ranks)
    # Full module names as keys: PEFT matches a key against the end of a module name at a dot.
    other = {m: r for m, r in report.ranks.items() if r != report.rank}
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": report.rank, "lora_alpha": report.rank, "target_modules": modules,
        "rank_pattern": other, "alpha_pattern": dict(other),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }


def summarize(report: ExtractReport, top: int = 3) -> list[str]:
    """Lines for the terminal: the overall error, the worst modules, and what the adapter drops."""
    lines = [f"rank {report.rank}: {len(report.errors)} matrices, relative error {report.relative_error:.4f} "
             f"(‖Δ − BA‖_F / ‖Δ‖_F over all of them)"]
    worst = sorted(report.errors.items(), key=lambda kv: -kv[1])[:top]
    lines += [f"  {module}: {error:.4f}" for module, error in worst]
    if report.dropped:
        total = math.sqrt(sum(v * v for v in report.dropped.values()))
        lines.append(f"not in the adapter (not linear weights): {len(report.dropped)} changed tensors, "
                     f"‖Δ‖_F {total:.4g}")
    return lines


def fold_factors(factors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ = B A per module weight name, from PEFT-named factors at scale 1 (the inverse, for checks)."""
    deltas: dict[str, torch.Tensor] = {}
    for key, a in factors.items():
        if key.endswith(".lora_A.weight"):
            module = key[len("base_model.model."): -len(".lora_A.weight")]
            b = factors[key.replace(".lora_A.", ".lora_B.")]
            deltas[f"{module}.weight"] = b.to(torch.float32) @ a.to(torch.float32)
    return deltas
