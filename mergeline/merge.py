"""The streaming merge engine: read tensor by tensor, merge with a registered method, write shards.

Usage: ``run_merge(load_merge_config("merge.yaml"), Path("out"), device="cpu", progress=print)``.

Memory is bounded by a few tensors (the base's, one per model, the method's workspace and the result),
never by model size: readers are lazy (:class:`CheckpointReader`), the writer streams each tensor to its
place in its shard (:class:`ShardedWriter`). Methods with global statistics get their statistics passes
(each re-reads the inputs) before the merge pass.

Per tensor (the reference names are the base's; the first input's for a method without base):
- non-float tensors (position ids, counters) are copied from the base;
- ``kind == "delta"``: model i gives δ_i = θ_i − θ_base (a task-vector folder gives δ_i directly), the
  method returns Δ, and θ = θ_base + Δ; ``kind == "weights"``: the method gets the weights (a task
  vector becomes θ_base + τ) and returns θ;
- everything is computed in ``dtype`` (float32 by default) on ``device`` and written in ``out_dtype``
  (default: the base tensor's own dtype).
Tied embeddings stored twice with identical data in the base and in every model (lm_head = embed) are
merged once, counted once by statistics passes, and written under both names.

Bad input (MergelineError, checked before anything is written where possible; the output folder is
written through ``atomic_dir`` so a failure leaves nothing): missing/corrupt/pickle checkpoints, a
tensor of the base missing from a model, a shape or dtype-kind mismatch (naming tensor and model; for
delta methods an embedding/LM head with more rows than the base is cut to the base's rows, as mergekit's
task-arithmetic family did), NaN/Inf in an input (naming tensor and file), bad parameters, CUDA asked
for but not available.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergeline.config import MergeConfig, ParameterResolver, check_config, same_path
from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir
from mergeline.io.safetensors_io import (
    DEFAULT_SHARD_BYTES,
    CheckpointReader,
    ShardedWriter,
    TensorSpec,
    copy_model_files,
)
from mergeline.layers import layer_index
from mergeline.merge_support import Buffers, build_report, dtype_name, resolve_device, resolved_config
from mergeline.methods import MergeMethod, MethodParameters, ModelParameters, TensorInputs

Progress = Callable[[str], None]
# Vocabulary-indexed tensors (rows = tokens): the only ones whose row count may differ from the base's.
EMBEDDING_SUFFIXES = (
    "embed_tokens.weight", "wte.weight", "word_embeddings.weight", "shared.weight", "lm_head.weight",
    "embed_out.weight",
)
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
# Tensors above this many elements go through row-separable methods in row blocks of about this size.
CHUNK_ELEMENTS = 1 << 24
# Methods whose output element depends only on the same element of the inputs (so row blocks give the
# same result as whole tensors). A method class can declare ``row_separable = True`` itself.
ROW_SEPARABLE = ("task_arithmetic", "linear")


@dataclass
class MergeResult:
    """Where the merge went, what the method reported, and the sha256 of every weight file."""

    out_dir: Path
    report: dict[str, Any]
    weight_sha256: dict[str, str]


@dataclass
class _Item:
    """The plan for one output tensor."""

    name: str
    out: TensorSpec
    layer: int | None
    floating: bool
    params: MethodParameters | None = None
    model_params: list[ModelParameters] = field(default_factory=list)
    cut: bool = False  # some model's rows are cut to the base's
    alias_of: str | None = None  # tied: same data as this earlier tensor


class _Engine:
    """One merge: the open readers, the plan, and the tensor loop."""

    def __init__(self, config: MergeConfig, device: torch.device, progress: Progress | None) -> None:
        self.config = config
        self.device = device
        self.progress = progress or (lambda line: None)
        self.method_cls = config.method_class()
        self.compute = config.compute_dtype()
        self.out_dtype = config.output_dtype()
        self.stack = ExitStack()
        self.aux: dict[str, CheckpointReader] = {}  # model_inputs / global_inputs, by path
        self.checked: set[tuple[int, str, Any]] = set()  # (reader id, tensor, rows) checked for NaN/Inf
        self.row_separable = bool(getattr(self.method_cls, "row_separable", self.method_cls.name in ROW_SEPARABLE))
        self.buffers = Buffers(device)
        self.out_buffers = Buffers(torch.device("cpu"))

    def open(self, path: str) -> CheckpointReader:
        return self.stack.enter_context(CheckpointReader(path))

    # ---- planning: everything that can be checked without reading tensor data -------------------
    def plan(self) -> list[_Item]:
        cfg = self.config
        self.base = self.open(cfg.base_model) if cfg.base_model else None
        if self.base is not None and self.base.is_task_vector:
            raise MergelineError(f"base_model {cfg.base_model}: is a task vector; the base must be a model")
        names = {m.model for m in cfg.models}
        readers = {path: self.open(path) for path in names if not same_path(path, cfg.base_model)}
        resolver = ParameterResolver(cfg, self._num_layers())
        self.inputs = resolver.inputs
        self.readers = [
            self.base if same_path(cfg.models[i].model, cfg.base_model) else readers[cfg.models[i].model]
            for i in self.inputs
        ]
        for i, reader in zip(self.inputs, self.readers):
            if reader.is_task_vector and self.base is None:
                raise MergelineError(f"models[{i}] ({reader.path}): a task vector needs base_model")
        self.ref = self.base or self.readers[0]
        items = []
        for name in self.ref.names():
            spec = self.ref.spec(name)
            floating = spec.dtype.is_floating_point
            out = TensorSpec(name, spec.shape, (self.out_dtype or spec.dtype) if floating else spec.dtype)
            item = _Item(name, out, layer_index(name), floating)
            if floating:
                item.cut = self._check_models(name, spec)
                item.params, item.model_params = resolver.resolve(name, item.layer)
                self._open_aux(item)
            items.append(item)
        self._tie(items)
        return items

    def _num_layers(self) -> int | None:
        ref = self.base or CheckpointReader(self.config.models[0].model)
        layers = [layer_index(n) for n in ref.names()]
        found = [layer for layer in layers if layer is not None]
        return max(found) + 1 if found else None

    def _check_models(self, name: str, spec: TensorSpec) -> bool:
        """Every input has tensor ``name`` with the reference's shape; True when rows must be cut."""
        cut = False
        for i, reader in zip(self.inputs, self.readers):
            where = f"models[{i}] ({reader.path})"
            if name not in reader:
                raise MergelineError(f"{where}: has no tensor {name!r} (architecture mismatch with the base?)")
            other = reader.spec(name)
            if not other.dtype.is_floating_point:
                raise MergelineError(f"{where}: tensor {name!r} is {other.dtype}, the base's is {spec.dtype}")
            if other.shape == spec.shape:
                continue
            if self._can_cut(name, other.shape, spec.shape):
                cut = True
                continue
            raise MergelineError(
                f"{where}: tensor {name!r} has shape {list(other.shape)}, the base has {list(spec.shape)}"
            )
        return cut

    def _can_cut(self, name: str, shape: tuple[int, ...], ref: tuple[int, ...]) -> bool:
        return (
            self.method_cls.kind == "delta" and name.endswith(EMBEDDING_SUFFIXES) and len(shape) == len(ref)
            and shape[0] > ref[0] and shape[1:] == ref[1:]
        )

    def _open_aux(self, item: _Item) -> None:
        paths = [getattr(item.params, key, None) for key in self.method_cls.global_inputs]
        for key in self.method_cls.model_inputs:
            paths += [getattr(mp, key, None) for mp in item.model_params]
        for path in paths:
            if path is not None and str(path) not in self.aux:
                self.aux[str(path)] = self.open(str(path))

    def _tie(self, items: list[_Item]) -> None:
        """Mark an LM head that holds exactly the embedding's data (in base and every model) as its alias."""
        readers = [r for r in [self.base, *self.readers] if r is not None]
        heads = [it for it in items if it.floating and it.name.endswith(HEAD_SUFFIXES)]
        embeds = [it for it in items if it.floating and it.name.endswith(EMBEDDING_SUFFIXES) and it not in heads]
        order = {it.name: k for k, it in enumerate(items)}
        for head in heads:
            for emb in embeds:
                if emb.out != TensorSpec(emb.name, head.out.shape, head.out.dtype):
                    continue
                if all(torch.equal(r.get(head.name), r.get(emb.name)) for r in readers):
                    first, second = sorted((head, emb), key=lambda it: order[it.name])
                    second.alias_of = first.name
                    break

    # ---- reading ---------------------------------------------------------------------------------
    def _read(self, reader: CheckpointReader, name: str, slot: object, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name`` of ``reader`` in the compute dtype on the device, in ``slot``'s reused buffer.

        The mapped bytes are converted straight into the buffer (one pass, no fresh allocation: page
        faults of new buffers cost more than the conversion itself), then dropped from this process.
        """
        src = reader.view(name)
        if span is not None:  # a row block (a chunk, or the base's rows of a longer embedding)
            src = src[span[0]:span[1]]
        if src.is_floating_point():
            x = self.buffers.take(slot, src.shape, self.compute)
            x.copy_(src)
        else:
            x = src.to(self.device, copy=True)
        reader.release(name)
        key = (id(reader), name, span)
        if key not in self.checked and x.is_floating_point():
            # A sum is NaN/Inf if any entry is (or on overflow; then the exact test decides): ~30x cheaper.
            if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
                raise MergelineError(f"{reader.file(name)}: tensor {name!r} contains NaN or Inf")
            self.checked.add(key)
        return x

    def inputs_for(self, item: _Item, span: tuple[int, int] | None = None) -> TensorInputs:
        """What the method sees for one tensor (or the row block ``span`` of it).

        Its tensors live in reused buffers: they are valid during the method call only.
        """
        if span is None and item.cut:
            span = (0, item.out.shape[0])
        base = self._read(self.base, item.name, "base", span) if self.base is not None else None
        kind = self.method_cls.kind
        tensors = []
        for k, reader in enumerate(self.readers):
            if reader is self.base:
                x = self.buffers.take(("model", k), base.shape, base.dtype)
                x.copy_(base) if kind == "weights" else x.zero_()
            else:
                x = self._read(reader, item.name, ("model", k), span)
                if reader.is_task_vector and kind == "weights":
                    x.add_(base)
                elif not reader.is_task_vector and kind == "delta":
                    x.sub_(base)
            tensors.append(x)
        model_inputs = {
            key: [self._aux(getattr(mp, key, None), item.name, (key, k), span) for k, mp in enumerate(item.model_params)]
            for key in self.method_cls.model_inputs
        }
        global_inputs = {
            key: self._aux(getattr(item.params, key, None), item.name, key, span) for key in self.method_cls.global_inputs
        }
        return TensorInputs(
            name=item.name, base=base, tensors=tensors, model_index=list(self.inputs), params=item.params,
            model_params=item.model_params, layer=item.layer, model_inputs=model_inputs, global_inputs=global_inputs,
        )

    def _aux(self, path: Any, name: str, slot: object, span: tuple[int, int] | None) -> torch.Tensor | None:
        if path is None:
            return None
        reader = self.aux[str(path)]
        return self._read(reader, name, ("aux", slot), span) if name in reader else None

    # ---- the passes ------------------------------------------------------------------------------
    def statistics(self, method: MergeMethod, items: list[_Item]) -> None:
        work = [it for it in items if it.floating and it.alias_of is None]
        for p in range(method.statistics_passes()):
            self.progress(f"statistics pass {p + 1}/{method.statistics_passes()} over {len(work)} tensors")
            for item in work:
                method.accumulate(self.inputs_for(item), p)
            method.finalize_statistics(p)

    def _spans(self, item: _Item) -> list[tuple[int, int] | None]:
        """Row blocks of a large tensor for a row-separable method (memory: a chunk, not a tensor)."""
        shape = item.out.shape
        if not self.row_separable or len(shape) < 1 or math.prod(shape) <= CHUNK_ELEMENTS:
            return [None]
        step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
        return [(r, min(r + step, shape[0])) for r in range(0, shape[0], step)]

    def _merge_block(self, method: MergeMethod, item: _Item, span: tuple[int, int] | None) -> torch.Tensor:
        inputs = self.inputs_for(item, span)
        result = method.merge_tensor(inputs)
        expected = item.out.shape if span is None else (span[1] - span[0], *item.out.shape[1:])
        if tuple(result.shape) != tuple(expected):
            raise RuntimeError(f"{self.method_cls.name} returned shape {tuple(result.shape)} for {item.name!r}")
        if self.method_cls.kind == "delta":
            assert inputs.base is not None
            # θ = θ_base + Δ, in place: the method's result is the engine's to reuse
            # (float addition commutes, so this equals mergekit's base + Δ bit for bit).
            result = result.add_(inputs.base) if result.dtype == self.compute else inputs.base + result
        if result.dtype == item.out.dtype and result.device.type == "cpu":
            return result
        out = self.out_buffers.take("out", result.shape, item.out.dtype)
        return out.copy_(result)

    def merged(self, method: MergeMethod, items: list[_Item]) -> Iterator[tuple[_Item, Iterator[torch.Tensor]]]:
        """Yield (item, its output as consecutive row blocks) in plan order.

        Blocks are produced lazily as the writer consumes them, so only one is in memory at a time.
        A tied alias reuses its first tensor's result.
        """
        aliased = {it.alias_of for it in items if it.alias_of}
        kept: dict[str, list[torch.Tensor]] = {}
        step = max(1, len(items) // 10)

        def blocks(item: _Item) -> Iterator[torch.Tensor]:
            if item.alias_of is not None:
                yield from kept.pop(item.alias_of)
                return
            for span in self._spans(item) if item.floating else [None]:
                out = self._merge_block(method, item, span) if item.floating else self.ref.get(item.name)
                if item.name in aliased:
                    kept.setdefault(item.name, []).append(out.clone())
                yield out

        for k, item in enumerate(items):
            yield item, blocks(item)
            if (k + 1) % step == 0 or k + 1 == len(items):
                self.progress(f"merged {k + 1}/{len(items)} tensors")


def run_merge(
    config: MergeConfig,
    out_dir: str | Path,
    device: str = "cpu",
    progress: Progress | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> MergeResult:
    """Merge per ``config`` into the model folder ``out_dir`` (HF layout + merge.yaml + merge_report.json)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_config(config)
    inputs = [config.base_model, *(m.model for m in config.models)]
    if any(p is not None and same_path(str(out_dir), p) for p in inputs):
        raise MergelineError(f"--out {out_dir}: is one of the input models; choose another output folder")
    engine = _Engine(config, resolve_device(device), progress)
    with engine.stack:
        items = engine.plan()
        first = next((it for it in items if it.floating), None)
        if first is None:
            raise MergelineError(f"{engine.ref.path}: has no floating-point tensor to merge")
        method = engine.method_cls(first.params, first.model_params)
        engine.progress(
            f"{config.merge_method}: {len(items)} tensors, {len(engine.readers)} model(s), "
            f"{engine.compute} on {engine.device}"
        )
        # Methods that draw from torch's global RNG stay reproducible, and the caller's RNG is untouched.
        rng = torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else [])
        engine.stack.enter_context(rng)
        torch.manual_seed(config.seed)
        engine.statistics(method, items)
        with atomic_dir(out_dir) as tmp:
            writer = ShardedWriter(tmp, [it.out for it in items], max_shard_bytes)
            try:
                for item, blocks in engine.merged(method, items):
                    writer.add_blocks(item.name, blocks)
                hashes = writer.close()
            except BaseException:
                writer.abort()
                raise
            source = engine.ref.model_dir
            copied = copy_model_files(source, tmp, dtype_name(engine.out_dtype)) if source else []
            report = build_report(config, engine, method, items, hashes, copied, time.perf_counter() - start)
            (tmp / "merge.yaml").write_text(resolved_config(config).to_yaml())
            (tmp / "merge_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    engine.progress(f"wrote {len(hashes)} weight file(s) to {out_dir} in {report['seconds']:.1f} s")
    return MergeResult(out_dir=out_dir, report=report, weight_sha256=hashes)
