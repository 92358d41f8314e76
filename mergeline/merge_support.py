"""Helpers of the merge engine (``mergeline.merge``): the compute device, the reusable buffer pool,
and the resolved config and report written beside a merged model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mergeline.config import MergeConfig
from mergeline.errors import MergelineError


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda[:i]``; CUDA that is not there is a bad input, not a crash."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MergelineError(f"--device: unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergelineError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise MergelineError(f"--device: unsupported device {device!r} (use cpu or cuda)")
    return dev


class Buffers:
    """One reusable flat buffer per (slot, dtype), grown to the largest tensor seen.

    Memory stays at one largest tensor per slot (the base, each model, the output), as streaming needs
    anyway, and most tensors reuse pages that are already mapped.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._flat: dict[tuple[object, torch.dtype], torch.Tensor] = {}

    def take(self, slot: object, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        flat = self._flat.get((slot, dtype))
        if flat is None or flat.numel() < n:
            flat = self._flat[(slot, dtype)] = torch.empty(max(n, 1), dtype=dtype, device=self.device)
        return flat[:n].view(shape)


def dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def resolved_config(config: MergeConfig) -> MergeConfig:
    """The config with absolute model paths, as written beside the merged model."""
    data = config.model_dump(mode="json")
    if data.get("base_model"):
        data["base_model"] = str(Path(data["base_model"]).resolve())
    for entry in data["models"]:
        entry["model"] = str(Path(entry["model"]).resolve())
    return MergeConfig.model_validate(data)


def build_report(config: MergeConfig, engine: Any, method: Any, items: list[Any],
                 hashes: dict[str, str], copied: list[str], seconds: float) -> dict[str, Any]:
    return {
        "merge_method": config.merge_method,
        "method": method.report(),
        "base_model": str(Path(config.base_model).resolve()) if config.base_model else None,
        "models": [str(Path(config.models[i].model).resolve()) for i in engine.inputs],
        "compute_dtype": dtype_name(engine.compute),
        "out_dtype": dtype_name(engine.out_dtype) or "base",
        "device": str(engine.device),
        "tensors": {
            "total": len(items),
            "merged": sum(1 for it in items if it.floating and it.alias_of is None),
            "copied_from_base": [it.name for it in items if not it.floating],
            "vocab_cut_to_base": [it.name for it in items if it.cut],
            "tied": {it.name: it.alias_of for it in items if it.alias_of},
        },
        "copied_files": copied,
        "weight_sha256": hashes,
        "seconds": round(seconds, 3),
    }
