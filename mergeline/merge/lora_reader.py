"""mergekit's ``model+adapter`` path syntax: a checkpoint read with a LoRA adapter folded in.

``open_checkpoint("path/to/model+path/to/adapter")`` is a :class:`LoraFoldedReader`: every tensor
reads as stored, except the adapter's targets, which read as W + ΔW (ΔW = s·B·A from
:mod:`mergeline.merge.lora`, added in W's dtype, as PEFT's ``merge_and_unload`` adds it, which is what
mergekit 0.1.5 runs before merging). Nothing is written to disk: the fold happens while the merge
streams, one tensor at a time (the last folded tensor is kept, so row blocks of it read it once).
As in mergekit, the spec splits on ``+`` into exactly two paths. ``model`` may be a task-vector
folder too: τ + ΔW is then the adapter's vector added to it.
"""

from __future__ import annotations

import os
import threading

import torch

from mergeline.errors import MergelineError
from mergeline.io.safetensors_io import CheckpointReader
from mergeline.merge.lora import LoraAdapter


def split_spec(spec: str) -> tuple[str, str | None]:
    """``(model, adapter)`` of ``model+adapter``; ``(spec, None)`` without a ``+``."""
    if "+" not in spec:
        return spec, None
    parts = spec.split("+")
    if len(parts) != 2 or not all(parts):
        raise MergelineError(f"{spec}: expected MODEL+LORA_ADAPTER (exactly one '+')")
    return parts[0], parts[1]


class LoraFoldedReader(CheckpointReader):
    """A :class:`CheckpointReader` of ``model`` whose adapter targets read with ΔW folded in."""

    def __init__(self, model: str | os.PathLike[str], adapter: str | os.PathLike[str]) -> None:
        super().__init__(model)
        self.adapter = LoraAdapter(adapter)
        floats = {n: tuple(self.shape(n)) for n in self.names() if self.dtype(n).is_floating_point}
        self.adapter.check_against(floats, str(model))
        self._folded = set(self.adapter.targets())
        self._last: tuple[str, torch.Tensor] | None = None
        self._lock = threading.Lock()  # pool threads read row blocks of the same tensor side by side

    def computes(self, name: str) -> bool:
        return name in self._folded

    def view(self, name: str) -> torch.Tensor:
        if name not in self._folded:
            return super().view(name)
        with self._lock:
            if self._last is None or self._last[0] != name:
                weight = super().view(name).clone()
                super().release(name)
                weight = self.adapter.folded(name, weight, in_place=True)
                self._last = (name, weight)
            return self._last[1]

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        if name not in self._folded:
            super().release(name, rows)
        elif rows is None:
            with self._lock:
                if self._last is not None and self._last[0] == name:
                    self._last = None

    def byte_range(self, name: str, rows: tuple[int, int] | None = None):  # type: ignore[no-untyped-def]
        if name in self._folded:
            raise MergelineError(f"{self.path}: tensor {name!r} is folded with a LoRA adapter; it has no stored bytes")
        return super().byte_range(name, rows)


def open_checkpoint(spec: str) -> CheckpointReader:
    """A reader of ``spec``: a model, file or task-vector folder, or ``model+adapter``."""
    model, adapter = split_spec(spec)
    return CheckpointReader(model) if adapter is None else LoraFoldedReader(model, adapter)
