"""Merging tensors and state dicts already in memory (notebooks, search loops), with any method.

    from mergeline.merge.memory import merge_state_dicts, merge_tensors

    merged = merge_state_dicts("ties", base, [sd_a, sd_b], lambda_=0.8,
                               model_parameters=[{"weight": 1, "density": 0.2}, {"weight": 0.5, "density": 0.4}])
    w = merge_tensors("slerp", w0, [w1], t=0.3)

This is the file-based engine (``mergeline.merge.engine``) with readers over the given tensors and a
writer that keeps the output tensors: the same plan, checks, parameter resolution (mergekit's
gradients and filter lists, by tensor name), statistics passes, row blocks and threads, so the result
equals, bit for bit, what ``mergeline merge`` writes for the same config and weights saved as one
safetensors file each (tensors are taken in that file's order). Parameters are
the config's: global ones as keywords (``lambda`` as ``lambda_``) or ``parameters``, per-model ones in
``model_parameters`` (a list is a gradient over layers, as in YAML, never one value per model). A
per-model input that is a tensor set in a file (STA's ``importance``, TaLoS's ``mask``, LATA's
``pretrained_model``) may be given as a state dict too. Non-float tensors are copied from the base (or
the first model). Inputs are read, never modified; outputs are new CPU tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from mergeline.errors import MergelineError
from mergeline.io.safetensors_format import TensorSpec
from mergeline.io.safetensors_io import CheckpointReader
from mergeline.merge.config import DTYPE_NAMES, MergeConfig, parse_merge_config
from mergeline.merge.checks import checked
from mergeline.merge.engine import Progress, Engine, prepare
from mergeline.merge.support import resolve_device

StateDict = Mapping[str, torch.Tensor]
_LABEL = "<memory>"


def storage_order(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The order in which a safetensors file saved from ``tensors`` stores them (by dtype, then name):
    the order a file-based merge plans its tensors in, which decides which of two tied tensors is
    merged and the order statistics are summed in. Read from the header of a one-entry-per-tensor save."""
    blob = safetensors_bytes({name: torch.zeros(1, dtype=t.dtype) for name, t in tensors.items()})
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


class MemoryReader(CheckpointReader):
    """A :class:`CheckpointReader` over tensors in memory (``label`` names it in messages), listing them
    in the order a single safetensors file of them would (:func:`storage_order`)."""

    def __init__(self, label: str, tensors: StateDict | torch.nn.Module) -> None:
        if isinstance(tensors, torch.nn.Module):
            tensors = tensors.state_dict()
        if not isinstance(tensors, Mapping):
            raise MergelineError(f"{label}: expected a state dict (name → tensor), got {type(tensors).__name__}")
        self.path = Path(label)
        self.is_task_vector = False
        self.task_vector_meta = None
        self._files, self._offsets, self._maps = {}, {}, {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._specs = {}
        for name, tensor in tensors.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise MergelineError(f"{label}: entry {name!r} is not a tensor named by a string")
            self._tensors[name] = tensor.detach().to("cpu").contiguous()
        for name in storage_order(self._tensors):
            self._specs[name] = TensorSpec(name, tuple(self._tensors[name].shape), self._tensors[name].dtype)

    @property
    def model_dir(self) -> Path | None:
        return None

    def computes(self, name: str) -> bool:
        return True  # no stored bytes: read through ``view``

    def view(self, name: str) -> torch.Tensor:
        self.spec(name)
        return self._tensors[name]

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Nothing is mapped."""

    def byte_range(self, name: str, rows: tuple[int, int] | None = None):  # type: ignore[no-untyped-def]
        raise MergelineError(f"{self.path}: tensor {name!r} is in memory; it has no stored bytes")


class MemoryWriter:
    """The writer side of the engine (``begin``, ``write`` …, ``end`` per tensor, in plan order) into
    new CPU tensors."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.tensors: dict[str, torch.Tensor] = {}
        self._flat = torch.empty(0)
        self._at = 0

    def begin(self, name: str) -> None:
        spec = self._specs[name]
        self.tensors[name] = torch.empty(spec.shape, dtype=spec.dtype)
        self._flat, self._at = self.tensors[name].view(-1), 0

    def write(self, block: torch.Tensor) -> None:
        count = block.numel()
        self._flat[self._at:self._at + count].copy_(block.reshape(-1))
        self._at += count

    def end(self) -> None:
        self._flat = torch.empty(0)


def merge_in_memory(config: MergeConfig, readers: Mapping[str, CheckpointReader], device: str = "cpu",
                    progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merge per ``config``, whose model names are keys of ``readers`` (files for any other name);
    returns the merged tensors (plan order) and the method's report."""
    config, ignored = checked(config)
    engine = Engine(config, resolve_device(device), progress, readers)
    with engine.stack:
        method, items = prepare(engine)
        writer = MemoryWriter([it.out for it in items])
        engine.write_all(method, items, writer)
        report = method.report()
    if ignored:
        report["ignored_parameters"] = ignored
    return writer.tensors, report


def _dtype_name(value: str | torch.dtype | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    names = {dtype: name for name, dtype in reversed(list(DTYPE_NAMES.items()))}
    if value not in names:
        raise MergelineError(f"dtype {value}: unsupported; use one of {', '.join(DTYPE_NAMES)}")
    return names[value]


def _named(setting: Any, readers: dict[str, CheckpointReader], label: str) -> Any:
    """A parameter value; a state dict (or module) given as one becomes the name of a reader over it."""
    tensors = isinstance(setting, Mapping) and setting and all(isinstance(v, torch.Tensor) for v in setting.values())
    if tensors or isinstance(setting, torch.nn.Module):
        readers[label] = MemoryReader(label, setting)
        return label
    return setting


def merge_state_dicts(
    method: str,
    base: StateDict | torch.nn.Module | None,
    models: Sequence[StateDict | torch.nn.Module],
    *,
    model_parameters: Sequence[Mapping[str, Any] | None] | None = None,
    parameters: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
    out_dtype: str | torch.dtype | None = None,
    seed: int = 0,
    device: str = "cpu",
    report: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Merge ``models`` (state dicts or modules) onto ``base`` with ``method`` and its parameters.

    Global parameters come from ``parameters`` and keywords (``lambda_=0.5`` is ``lambda``); each
    model's from ``model_parameters[i]``. ``dtype`` / ``out_dtype`` / ``seed`` as in a config. The
    method's report (its coefficients) is stored into ``report`` when a dict is given.
    """
    if model_parameters is not None and len(model_parameters) != len(models):
        raise MergelineError(f"model_parameters: {len(model_parameters)} entries for {len(models)} models")
    readers: dict[str, CheckpointReader] = {}
    shared = {("lambda" if key == "lambda_" else key): value for key, value in {**(parameters or {}), **params}.items()}
    shared = {key: _named(value, readers, f"{_LABEL}/parameters.{key}") for key, value in shared.items()}
    entries = []
    for i, model in enumerate(models):
        label = f"{_LABEL}/models[{i}]"
        readers[label] = MemoryReader(label, model)
        own = dict((model_parameters or [None] * len(models))[i] or {})
        own = {key: _named(value, readers, f"{label}.{key}") for key, value in own.items()}
        entries.append({"model": label, "parameters": own})
    document: dict[str, Any] = {"merge_method": method, "models": entries, "parameters": shared, "seed": seed,
                                "dtype": _dtype_name(dtype), "out_dtype": _dtype_name(out_dtype)}
    if base is not None:
        readers[f"{_LABEL}/base"] = MemoryReader(f"{_LABEL}/base", base)
        document["base_model"] = f"{_LABEL}/base"
    config = parse_merge_config({k: v for k, v in document.items() if v is not None}, "merge_state_dicts")
    merged, method_report = merge_in_memory(config, readers, device)
    if report is not None:
        report.update(method_report)
    return merged


def merge_tensors(method: str, base: torch.Tensor | None, tensors: Sequence[torch.Tensor], *, name: str = "weight",
                  **kwargs: Any) -> torch.Tensor:
    """One tensor: :func:`merge_state_dicts` over ``{name: tensor}`` (``name`` matters to filters and
    layer gradients, e.g. ``model.layers.3.mlp.up_proj.weight``)."""
    merged = merge_state_dicts(method, None if base is None else {name: base}, [{name: t} for t in tensors], **kwargs)
    return merged[name]
