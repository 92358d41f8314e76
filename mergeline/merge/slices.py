"""mergekit's ``slices:``: output layers stacked from layer ranges of the inputs, merged slice by slice.

Config (mergekit 0.1.5)::

    merge_method: passthrough            # or any method: then each slice's sources are merged
    slices:
      - sources: [{model: A, layer_range: [0, 16]}]
      - sources:
          - {model: B, layer_range: [8, 24], parameters: {weight: [0.2, 0.8]}}
          - {model: base, layer_range: [8, 24]}
        base_model: base                 # optional, default: the config's base_model
        parameters: {lambda: 0.9}        # this slice's method-wide parameters and per-model defaults

Planning, as mergekit's ``MergePlanner``:
- the output has Σ (b − a) layers; output layer ``o + i`` of a slice that starts at output layer ``o``
  is merged from layer ``a + i`` of each of its sources (tensor names renamed: :class:`RenamedReader`);
- the tensors outside the blocks come from the first slice's sources (embeddings: names with
  ``embed``, ``wte``, ``wpe``, where mergekit's architecture tables put its "pre" weights) or from the
  last slice's (final norm, LM head: its "post" weights), merged with that slice's parameters at t = 0;
- gradients run over each slice's own layers: ``t = i / (n − 1)`` (1 in a one-layer slice);
- per-model parameters: the source's own ``parameters``, then the slice's, then the global ones;
  method-wide: the slice's, then the global ones; a per-model filter matches the tensor's name in its
  source (the input layer index), a method-wide one the output name;
- a method that needs a base needs it among the slice's sources, with the same layer count.

Refused with one line: sources of different lengths, a layer range outside a model, a model twice in
one slice, a method that needs the base without one there, methods that read extra per-model files
by tensor name (STA importance, TaLoS masks, LATA's pretrained model) or need whole-model statistics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mergeline.merge.config import MergeConfig, OutputSlice, check_model_count, check_model_keys, check_parameter_keys, same_path
from mergeline.errors import MergelineError
from mergeline.io.safetensors_io import CheckpointReader, TensorSpec
from mergeline.merge.layers import layer_index, with_layer
from mergeline.methods import MergeMethod
from mergeline.parameters import ScopedResolver

# Tensors outside the blocks that mergekit's architectures list before the blocks ("pre_weights").
PRE_NAME = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")


def is_pre_tensor(name: str) -> bool:
    """An embedding (taken from the first slice's sources); other non-block tensors come from the last."""
    return bool(PRE_NAME.search(name)) and not name.endswith(HEAD_SUFFIXES)


class RenamedReader:
    """A reader of one slice source under output names: output layer ``o + i`` is the source's layer
    ``a + i``. Reads go to the source's reader (its mapped pages, releases and byte ranges)."""

    def __init__(self, reader: CheckpointReader, names: dict[str, str]) -> None:
        self.inner = reader
        self.to_input = names  # output name -> the source's own name
        self.path = reader.path
        self.is_task_vector = reader.is_task_vector
        self.model_dir = reader.model_dir

    def names(self) -> list[str]:
        return list(self.to_input)

    def __contains__(self, name: str) -> bool:
        return name in self.to_input

    def input_name(self, name: str) -> str:
        return self.to_input[name]

    def spec(self, name: str) -> TensorSpec:
        if name not in self.to_input:
            raise MergelineError(f"{self.path}: has no tensor for output {name!r}")
        inner = self.inner.spec(self.to_input[name])
        return TensorSpec(name, inner.shape, inner.dtype)

    def file(self, name: str) -> Any:
        return self.inner.file(self.to_input[name])

    def byte_range(self, name: str, rows: tuple[int, int] | None = None) -> tuple[Any, int, int]:
        return self.inner.byte_range(self.to_input[name], rows)

    def computes(self, name: str) -> bool:
        return self.inner.computes(self.to_input[name])

    def view(self, name: str) -> torch.Tensor:
        return self.inner.view(self.to_input[name])

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        self.inner.release(self.to_input[name], rows)

    def get(self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return self.inner.get(self.to_input[name], dtype, device)


@dataclass
class InputGroup:
    """The inputs of a run of output tensors: the whole ``models:`` list, or one output slice (or the
    slice whose sources give the tensors outside the blocks)."""

    label: str  # "" (models: form) or "slices[i]", for messages
    base: Any  # CheckpointReader | RenamedReader | None
    readers: list[Any]  # one per method input
    inputs: list[int]  # configured index of each input (models[i], or the source's index in its slice)
    resolver: ScopedResolver
    order: list[Path]  # every model of the group in mergekit's gather order (vocabulary re-indexing)


@dataclass
class PlannedTensor:
    """One output tensor: its group of inputs, block index, gradient position ``t`` and each input's own
    name of it (empty in the ``models:`` form, where the names are the output's)."""

    name: str
    group: InputGroup
    layer: int | None
    t: float
    input_names: list[str]


def slice_base(config: MergeConfig, piece: OutputSlice) -> str | None:
    return piece.base_model or config.base_model


def check_slices(config: MergeConfig, method: type[MergeMethod]) -> None:
    """What can be checked without opening a file (the layer ranges are checked in :func:`plan_slices`)."""
    assert config.slices is not None
    if method.model_inputs or method.global_inputs:
        raise MergelineError(
            f"slices: merge_method {method.name!r} reads extra per-model files by tensor name; "
            "not supported with slices (use models:)"
        )
    check_parameter_keys(method, config.parameters, "parameters")
    for i, piece in enumerate(config.slices):
        where = f"slices[{i}]"
        if not piece.sources:
            raise MergelineError(f"{where}: sources: give at least one source")
        lengths = [src.layer_range[1] - src.layer_range[0] for src in piece.sources]
        for j, src in enumerate(piece.sources):
            a, b = src.layer_range
            if a < 0 or b < a:
                raise MergelineError(f"{where}.sources[{j}] ({src.model}): layer_range [{a}, {b}] is not 0 <= a <= b")
            if any(same_path(src.model, other.model) for other in piece.sources[:j]):
                raise MergelineError(f"{where}.sources[{j}] ({src.model}): this model is already a source of the slice")
        if len(set(lengths)) > 1:
            raise MergelineError(f"{where}: all sources must span the same number of layers (got {lengths})")
        base = slice_base(config, piece)
        has_base = base is not None and any(same_path(src.model, base) for src in piece.sources)
        if method.requires_base and not base:
            raise MergelineError(f"{where}: merge_method {method.name!r} needs base_model")
        if _origin(method) and base and not has_base:
            raise MergelineError(
                f"{where}: base_model {base} is not among the slice's sources "
                "(mergekit merges a slice from its sources only: list it there with the same layer count)"
            )
        check_model_count(method, len(_inputs(piece, base, method)), f"{where}: ")
        check_parameter_keys(method, piece.parameters, f"{where}.parameters")
        for j in _inputs(piece, base, method):
            check_model_keys(method, piece.sources[j].parameters, f"{where}.sources[{j}] ({piece.sources[j].model})")


def _origin(method: type[MergeMethod]) -> bool:
    """Whether a given base is the method's origin rather than one of its inputs (mergekit's "required"
    and "optional" base policies; ``base_optional`` is declared by methods such as nuslerp)."""
    return method.requires_base or bool(getattr(method, "base_optional", False))


def _inputs(piece: OutputSlice, base: str | None, method: type[MergeMethod]) -> list[int]:
    """Indices of the slice's sources the method receives (the base is none of them when it is the origin)."""
    return [j for j, src in enumerate(piece.sources) if not (_origin(method) and same_path(src.model, base))]


def output_layers(config: MergeConfig) -> int:
    """The output's number of blocks (mergekit: the sum of the slices' lengths)."""
    return sum(p.sources[0].layer_range[1] - p.sources[0].layer_range[0] for p in config.slices or [])


def plan_slices(config: MergeConfig, method: type[MergeMethod],
                open_model: Callable[[str], CheckpointReader]) -> list[PlannedTensor]:
    """Every output tensor of a ``slices:`` config, in order: embeddings, the slices' blocks, the rest."""
    assert config.slices is not None
    slices = config.slices
    planned: list[PlannedTensor] = []
    first = _group(config, method, 0, slices[0], open_model, None)
    ref = first.base or first.readers[0]
    for name in ref.names():
        if layer_index(name) is None and is_pre_tensor(name):
            planned.append(PlannedTensor(name, first, None, 0.0, [name] * len(first.readers)))
    offset = 0
    for i, piece in enumerate(slices):
        n = piece.sources[0].layer_range[1] - piece.sources[0].layer_range[0]
        group = _group(config, method, i, piece, open_model, offset)
        ref = group.base or group.readers[0]
        for name in ref.names():
            layer = layer_index(name)
            assert layer is not None
            t = (layer - offset) / (n - 1) if n > 1 else 1.0
            planned.append(PlannedTensor(name, group, layer, t, [r.input_name(name) for r in group.readers]))
        offset += n
    # mergekit pairs the last slice's models with the first slice's weight list: zip keeps the shorter.
    last = _group(config, method, len(slices) - 1, slices[-1], open_model, None, keep=len(slices[0].sources))
    ref = last.base or last.readers[0]
    for name in ref.names():
        if layer_index(name) is None and not is_pre_tensor(name):
            planned.append(PlannedTensor(name, last, None, 0.0, [name] * len(last.readers)))
    return planned


def _group(config: MergeConfig, method: type[MergeMethod], index: int, piece: OutputSlice,
           open_model: Callable[[str], CheckpointReader], offset: int | None, keep: int | None = None) -> InputGroup:
    """The readers and parameter scopes of slice ``index``: renamed to output layers from ``offset`` on,
    or (``offset`` None) its sources' tensors outside the blocks."""
    where = f"slices[{index}]"
    sources = piece.sources[:keep]
    base_path = slice_base(config, piece)
    readers: list[Any] = []
    for j, src in enumerate(sources):
        raw = open_model(src.model)
        readers.append(_renamed(raw, src.layer_range, offset, f"{where}.sources[{j}] ({src.model})")
                       if offset is not None else _outside_blocks(raw))
    base_index = next((j for j, src in enumerate(sources) if same_path(src.model, base_path)), None)
    if _origin(method) and base_path and base_index is None:  # (only when ``keep`` cut it off)
        raise MergelineError(
            f"{where}: mergekit merges the tensors after the blocks from the first {keep} of the last slice's "
            "sources (as many as slices[0] has); base_model is not among them: list it earlier"
        )
    inputs = [j for j in _inputs(piece, base_path, method) if j < len(sources)]
    resolver = ScopedResolver.scoped(
        method, config.seed, [piece.parameters, config.parameters],
        [[sources[j].parameters, piece.parameters, config.parameters] for j in inputs],
        [f"{where}.sources[{j}] ({sources[j].model})" for j in inputs],
    )
    base = readers[base_index] if base_index is not None and base_path else None
    return InputGroup(where, base, [readers[j] for j in inputs], inputs, resolver,
                      [Path(src.model).resolve() for src in sources])


def _outside_blocks(reader: CheckpointReader) -> RenamedReader:
    return RenamedReader(reader, {n: n for n in reader.names() if layer_index(n) is None})


def _renamed(reader: CheckpointReader, layer_range: tuple[int, int], offset: int, where: str) -> RenamedReader:
    a, b = layer_range
    layers = {layer_index(n) for n in reader.names()} - {None}
    count = max(layers) + 1 if layers else 0  # type: ignore[type-var]
    if b > count:
        raise MergelineError(f"{where}: layer_range [{a}, {b}] is outside the model's {count} layers")
    names = {}
    for name in reader.names():
        layer = layer_index(name)
        if layer is not None and a <= layer < b:
            names[with_layer(name, offset + layer - a)] = name
    return RenamedReader(reader, names)
