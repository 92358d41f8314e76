"""Exact global top-k threshold over a stream of tensors, in two passes with bounded memory.

Used where a fraction of a whole model's entries is kept (TIES ``trim_scope: global``, STA
``scope: global``). For non-negative float32 values the int32 bit pattern is monotone in the value, so:

* pass 0 counts every value into 2^15 bins by its upper 16 bits (sign bit is 0) and finds the bin that
  holds the k-th largest value;
* pass 1 counts only the values inside that bin by their lower 16 bits, which pins the k-th largest
  value exactly.

Memory is two fixed histograms per group (≈ 0.8 MiB), whatever the model size. Entries are then kept
when ``value ≥ threshold``: with no ties at the threshold that is exactly k entries; with ties every
entry equal to the k-th largest value is kept (the tie rule of the global scope).
"""

from __future__ import annotations

import torch

from mergeline.errors import MergelineError

_HIGH_BINS = 1 << 15
_LOW_BINS = 1 << 16


def _bits(values: torch.Tensor) -> torch.Tensor:
    """int64 bit patterns of non-negative float32 values (monotone in the value)."""
    return values.detach().reshape(-1).to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


class GlobalTopK:
    """k-th largest value per group (one group per model) of non-negative scores seen in a stream."""

    passes = 2

    def __init__(self) -> None:
        self._high: dict[int, torch.Tensor] = {}
        self._low: dict[int, torch.Tensor] = {}
        self._count: dict[int, int] = {}
        self._k: dict[int, int] = {}
        self._bin: dict[int, int] = {}  # upper 16 bits of the threshold
        self._rank_in_bin: dict[int, int] = {}  # how many of the k fall inside that bin
        self.thresholds: dict[int, float] = {}

    def add(self, group: int, scores: torch.Tensor, pass_index: int, name: str) -> None:
        """Count ``scores`` (non-negative, finite) of tensor ``name`` for ``group`` in pass 0 or 1."""
        if pass_index == 0:
            if not bool(torch.isfinite(scores).all()):
                raise MergelineError(f"tensor {name!r}: non-finite values (NaN/inf) in model {group}")
            bits = _bits(scores)
            hist = torch.bincount(bits >> 16, minlength=_HIGH_BINS).cpu()
            self._high[group] = self._high.get(group, 0) + hist
            self._count[group] = self._count.get(group, 0) + bits.numel()
        elif pass_index == 1 and group in self._bin:
            bits = _bits(scores)
            inside = bits[(bits >> 16) == self._bin[group]]
            hist = torch.bincount(inside & 0xFFFF, minlength=_LOW_BINS).cpu()
            self._low[group] = self._low.get(group, 0) + hist

    def count(self, group: int) -> int:
        return self._count.get(group, 0)

    def finalize(self, pass_index: int, k: dict[int, int]) -> None:
        """After pass 0: ``k[group]`` entries to keep per group; after pass 1: fix the thresholds."""
        if pass_index == 0:
            for group, total in self._count.items():
                want = min(k.get(group, total), total)
                self._k[group] = want
                if want <= 0:
                    self.thresholds[group] = float("inf")
                    continue
                # Walk bins from the top until the running count reaches k.
                from_top = torch.flip(self._high[group], dims=[0]).cumsum(0)
                pos = int(torch.searchsorted(from_top, torch.tensor(want, dtype=from_top.dtype)))
                high_bin = _HIGH_BINS - 1 - pos
                above = int(from_top[pos - 1]) if pos > 0 else 0
                self._bin[group] = high_bin
                self._rank_in_bin[group] = want - above
        elif pass_index == 1:
            for group, high_bin in self._bin.items():
                from_top = torch.flip(self._low[group], dims=[0]).cumsum(0)
                need = torch.tensor(self._rank_in_bin[group], dtype=from_top.dtype)
                low = _LOW_BINS - 1 - int(torch.searchsorted(from_top, need))
                pattern = torch.tensor([(high_bin << 16) | low], dtype=torch.int32)
                self.thresholds[group] = float(pattern.view(torch.float32)[0])

    def mask(self, group: int, scores: torch.Tensor) -> torch.Tensor:
        """Entries of ``scores`` at or above the group's threshold (all False if it keeps nothing)."""
        return scores >= self.thresholds.get(group, float("inf"))
