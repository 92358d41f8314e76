"""Planning and reading a merge's inputs: the half of the engine (``mergeline.merge.engine``) that knows the files.

Planning checks everything that can be checked without tensor data (every model has every tensor of
the reference with its shape, task vectors have a base, per-tensor parameters resolve, auxiliary inputs
open, tied embeddings are found); reading converts mapped bytes into the thread's reused buffers in the
compute dtype on the device, checks inputs for NaN/Inf where the method needs it, and builds the
:class:`TensorInputs` a method sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergeline.merge.config import ParameterResolver, same_path
from mergeline.errors import MergelineError
from mergeline.io.safetensors_io import CheckpointReader, TensorSpec
from mergeline.io.tensor_aliases import reader_aliases
from mergeline.merge.layers import layer_index
from mergeline.methods import MethodParameters, ModelParameters, TensorInputs
from mergeline.merge.slices import InputGroup, PlannedTensor, plan_slices
from mergeline.merge.tokenizer import build_vocabulary, permute_embeddings

# Vocabulary-indexed tensors (rows = tokens): the only ones whose row count may differ from the base's.
EMBEDDING_SUFFIXES = (
    "embed_tokens.weight", "wte.weight", "word_embeddings.weight", "shared.weight", "lm_head.weight",
    "embed_out.weight",
)
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
Span = tuple[int, int] | None


@dataclass
class PlanItem:
    """The plan for one output tensor."""

    name: str
    out: TensorSpec
    layer: int | None
    floating: bool
    params: MethodParameters | None = None
    model_params: list[ModelParameters] = field(default_factory=list)
    cut: bool = False  # some model's rows are cut to the base's
    alias_of: str | None = None  # tied: same data as this earlier tensor
    group: InputGroup = None  # type: ignore[assignment]  # the readers and resolver of this tensor
    vocab: bool = False  # rows re-indexed to the output tokenizer's vocabulary before the merge


def _same_data(reader: CheckpointReader, a: str, b: str) -> bool:
    """Whether tensors ``a`` and ``b`` of ``reader`` hold equal values, compared where they are mapped
    (copies of two embeddings per input cost more than the comparison)."""
    try:
        return torch.equal(reader.view(a), reader.view(b))
    finally:
        reader.release(a)
        reader.release(b)


class MergeInputs:
    """Mixed into the engine, which provides ``config``, ``device``, ``method_cls``, ``compute``,
    ``out_dtype``, ``aux`` (with ``aux_aliases``: each auxiliary reader's tensor aliases, by reader id),
    ``checked``, ``check_inputs``, ``buffers``, ``staging``, ``workspace``,
    ``open`` and ``_prefetched`` (inputs already on the device, by (reader id, name, rows))."""

    # ---- planning: everything that can be checked without reading tensor data -------------------
    def plan(self) -> list[PlanItem]:
        cfg = self.config
        self._opened: dict[Path, CheckpointReader] = {}
        self.base = self.open_model(cfg.base_model) if cfg.base_model else None
        if self.base is not None and self.base.is_task_vector:
            raise MergelineError(f"base_model {cfg.base_model}: is a task vector; the base must be a model")
        planned = plan_slices(cfg, self.method_cls, self.open_model) if cfg.slices else self._plan_models()
        self.vocab = build_vocabulary(cfg, cfg.all_models(), cfg.base_model)
        groups = list({id(p.group): p.group for p in planned}.values())
        for group in groups:
            for k, reader in enumerate(group.readers):
                if reader.is_task_vector and group.base is None:
                    raise MergelineError(f"{self.where(group, k)}: a task vector needs base_model")
                if reader.is_task_vector and self.vocab is not None:
                    raise MergelineError(f"{self.where(group, k)}: a task vector has no tokenizer to re-index its "
                                         "embeddings by; tokenizer_source needs model folders")
        self.inputs, self.readers = groups[0].inputs, groups[0].readers  # the first group's, for the report
        self.ref = self.base or groups[0].base or groups[0].readers[0]
        items = []
        for tensor in planned:
            group = tensor.group
            spec = (group.base or group.readers[0]).spec(tensor.name)
            floating = spec.dtype.is_floating_point
            shape = spec.shape
            vocab = floating and self.vocab is not None and tensor.name.endswith(EMBEDDING_SUFFIXES)
            if vocab:
                shape = (self.vocab.size, *spec.shape[1:])  # rows re-indexed to the output vocabulary
            out = TensorSpec(tensor.name, shape, (self.out_dtype or spec.dtype) if floating else spec.dtype)
            item = PlanItem(tensor.name, out, tensor.layer, floating, group=group, vocab=vocab)
            if floating:
                item.cut = self._check_models(item, spec)
                item.params, item.model_params = group.resolver.resolve(tensor.name, tensor.layer, tensor.t,
                                                                        tensor.input_names)
                self._open_aux(item)
            items.append(item)
        self._tie(items)
        return items

    def open_model(self, path: str) -> CheckpointReader:
        """The one reader of model ``path`` (a model named twice, or as base and source, is opened once)."""
        key = Path(path).resolve()
        if key not in self._opened:
            self._opened[key] = self.open(path)
        return self._opened[key]

    def _plan_models(self) -> list[PlannedTensor]:
        """The ``models:`` form: one group of inputs for every tensor, named as in the base."""
        cfg = self.config
        assert cfg.models is not None
        resolver = ParameterResolver(cfg, self._num_layers())
        readers = [self.base if same_path(cfg.models[i].model, cfg.base_model) else self.open_model(cfg.models[i].model)
                   for i in resolver.inputs]
        order = [m.model for m in cfg.models] + ([cfg.base_model] if cfg.base_model else [])
        group = InputGroup("", self.base, readers, resolver.inputs, resolver, [Path(p).resolve() for p in order])
        return [PlannedTensor(name, group, layer_index(name), resolver.layer_fraction(layer_index(name)), [])
                for name in (self.base or readers[0]).names()]

    def where(self, group: InputGroup, k: int) -> str:
        """``models[i] (path)`` or ``slices[i].sources[j] (path)``: input ``k`` of ``group``, for messages."""
        index, path = group.inputs[k], group.readers[k].path
        return f"{group.label}.sources[{index}] ({path})" if group.label else f"models[{index}] ({path})"

    def _num_layers(self) -> int | None:
        ref = self.base or self.open_model(self.config.models[0].model)  # type: ignore[index]
        layers = [layer_index(n) for n in ref.names()]
        found = [layer for layer in layers if layer is not None]
        return max(found) + 1 if found else None

    def _check_models(self, item: PlanItem, spec: TensorSpec) -> bool:
        """Every input has tensor ``name`` with the reference's shape; True when rows must be cut."""
        cut = False
        name = item.name
        for k, reader in enumerate(item.group.readers):
            where = self.where(item.group, k)
            if name not in reader:
                raise MergelineError(f"{where}: has no tensor {name!r} (architecture mismatch with the base?)")
            other = reader.spec(name)
            if not other.dtype.is_floating_point:
                raise MergelineError(f"{where}: tensor {name!r} is {other.dtype}, the base's is {spec.dtype}")
            if other.shape == spec.shape or (item.vocab and other.shape[1:] == spec.shape[1:]):
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

    def _open_aux(self, item: PlanItem) -> None:
        paths = [getattr(item.params, key, None) for key in self.method_cls.global_inputs]
        for key in self.method_cls.model_inputs:
            paths += [getattr(mp, key, None) for mp in item.model_params]
        for path in paths:
            if path is not None and str(path) not in self.aux:
                reader = self.aux[str(path)] = self.open(str(path))
                self.aux_aliases[id(reader)] = reader_aliases(reader)

    def stored_name(self, reader: CheckpointReader, name: str) -> str | None:
        """The name under which ``reader`` stores tensor ``name`` (an auxiliary file's alias resolved to
        the tensor it shares, see ``mergeline.io.tensor_aliases``), or None when it holds no such tensor."""
        name = self.aux_aliases.get(id(reader), {}).get(name, name)
        return name if name in reader else None

    def _tie(self, items: list[PlanItem]) -> None:
        """Mark an LM head that holds exactly the embedding's data (in base and every model) as its alias."""
        heads = [it for it in items if it.floating and it.name.endswith(HEAD_SUFFIXES)]
        embeds = [it for it in items if it.floating and it.name.endswith(EMBEDDING_SUFFIXES) and it not in heads]
        order = {it.name: k for k, it in enumerate(items)}
        for head in heads:
            readers = [r for r in [head.group.base, *head.group.readers] if r is not None]
            for emb in embeds:
                # (slices: the embedding and the head may come from different slices' sources)
                if emb.group is not head.group or emb.out != TensorSpec(emb.name, head.out.shape, head.out.dtype):
                    continue
                if all(_same_data(r, head.name, emb.name) for r in readers):
                    first, second = sorted((head, emb), key=lambda it: order[it.name])
                    second.alias_of = first.name
                    break

    # ---- reading ---------------------------------------------------------------------------------
    def _read(self, reader: CheckpointReader, name: str, slot: object, span: Span = None,
              index: torch.Tensor | None = None, whole: bool = True) -> torch.Tensor:
        """Tensor ``name`` of ``reader`` (its rows ``span``, or its flat entries ``index``) in the compute
        dtype on the device, in ``slot``'s reused buffer (this thread's).

        The mapped bytes are converted straight into the buffer (one pass, no fresh allocation: page
        faults of new buffers cost more than the conversion itself). A whole-tensor read drops the
        mapped pages from this process at once; row blocks leave that to the caller (``release``).
        """
        fetched = self._prefetched.get((id(reader), name, span)) if index is None else None
        if fetched is not None:  # already on the device, in the stored dtype (the GPU loop)
            # (non-float inputs, e.g. TaLoS's bool masks, keep their dtype, as below)
            same = fetched.dtype == self.compute or not fetched.is_floating_point()
            x = fetched if same else self.buffers.take(slot, fetched.shape, self.compute)
            if x is not fetched:
                x.copy_(fetched)
            if self.check_inputs:
                self._check_finite(reader, name, span, x)
            return x
        src = reader.view(name)
        if span is not None:  # a row block (a chunk, or the base's rows of a longer embedding)
            src = src[span[0]:span[1]]
        if index is not None:
            src = src.reshape(-1)[index]
        if src.is_floating_point() and self.device.type == "cuda":
            # The stored bytes cross the bus as they are (bf16: half of float32's), asynchronously from
            # pinned memory, and are converted on the GPU.
            host = self.staging.take(slot, src.shape, src.dtype)
            host.copy_(src)
            x = self.buffers.take(slot, src.shape, self.compute)
            raw = x if src.dtype == self.compute else self.buffers.take(("raw", slot), src.shape, src.dtype)
            raw.copy_(host, non_blocking=True)
            if raw is not x:
                x.copy_(raw)
        elif src.is_floating_point():
            x = self.buffers.take(slot, src.shape, self.compute)
            x.copy_(src)
        else:
            x = src.to(self.device, copy=True)
        del src
        if whole:
            reader.release(name)
        if self.check_inputs and index is None:
            self._check_finite(reader, name, span, x)
        return x

    def _check_finite(self, reader: CheckpointReader, name: str, span: Span, x: torch.Tensor) -> None:
        key = (id(reader), name, span)
        if key not in self.checked and x.is_floating_point():
            # A sum is NaN/Inf if any entry is (or on overflow; then the exact test decides): ~30x cheaper.
            if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
                raise MergelineError(f"{reader.file(name)}: tensor {name!r} contains NaN or Inf")
            self.checked.add(key)

    def _check_output(self, item: PlanItem, span: Span, result: torch.Tensor) -> None:
        """The merged values as they are written (after the cast to the output dtype) must be finite.

        Only a non-finite output sends us to the inputs, to name the one that holds the NaN/Inf; when
        every input is finite, the coefficients overflowed (λ = 1e308, a float16 output of a huge
        weight) and the merge is refused all the same: an Inf model is never written."""
        if bool(torch.isfinite(result.sum())) or bool(torch.isfinite(result).all()):
            return
        self._blame_nonfinite(item, span)

    def _blame_nonfinite(self, item: PlanItem, span: Span) -> None:
        """Raise naming the input of ``item`` that holds a NaN/Inf, or the overflow when none does."""
        if span is None and item.cut:
            span = (0, item.out.shape[0])
        for reader in self._all_readers(item, aux=False):
            x = self._read(reader, item.name, "nonfinite", span, whole=False)
            self.checked.discard((id(reader), item.name, span))
            self._check_finite(reader, item.name, span, x)
        raise MergelineError(
            f"tensor {item.name!r}: the merged values overflow to Inf/NaN in {item.out.dtype} although every "
            "input is finite; check the coefficients (lambda, weight, t) and out_dtype"
        )

    def inputs_for(self, item: PlanItem, span: Span = None, block: int | None = None,
                   index: torch.Tensor | None = None) -> TensorInputs:
        """What the method sees for one tensor (or the row block ``span`` of it, number ``block``; or
        its flat entries ``index``).

        Its tensors live in this thread's reused buffers: they are valid during the method call only.
        """
        if span is None and item.cut:
            span = (0, item.out.shape[0])
        whole = block is None and index is None
        if index is not None:
            span = None
        read = lambda reader, slot: self._read(reader, item.name, slot, span, index, whole)  # noqa: E731
        group = item.group
        base = read(group.base, "base") if group.base is not None else None
        kind = self.method_cls.kind
        tensors = []
        for k, reader in enumerate(group.readers):
            if reader is group.base:
                x = self.buffers.take(("model", k), base.shape, base.dtype)
                x.copy_(base) if kind == "weights" else x.zero_()
            else:
                x = read(reader, ("model", k))
                if reader.is_task_vector and kind == "weights":
                    x.add_(base)
                elif not reader.is_task_vector and kind == "delta":
                    x.sub_(base)
            tensors.append(x)
        model_inputs = {
            key: [self._aux(getattr(mp, key, None), item.name, (key, k), span, index, whole)
                  for k, mp in enumerate(item.model_params)]
            for key in self.method_cls.model_inputs
        }
        global_inputs = {
            key: self._aux(getattr(item.params, key, None), item.name, key, span, index, whole)
            for key in self.method_cls.global_inputs
        }
        return TensorInputs(
            name=item.name, base=base, tensors=tensors, model_index=list(group.inputs), params=item.params,
            model_params=item.model_params, layer=item.layer, model_inputs=model_inputs, global_inputs=global_inputs,
            block=block, workspace=self.workspace, rows=span if block is not None else None,
        )

    def _aux(self, path: Any, name: str, slot: object, span: Span, index: torch.Tensor | None,
             whole: bool) -> torch.Tensor | None:
        if path is None:
            return None
        reader = self.aux[str(path)]
        stored = self.stored_name(reader, name)
        return None if stored is None else self._read(reader, stored, ("aux", slot), span, index, whole)

    def _all_readers(self, item: PlanItem, aux: bool = True) -> list[Any]:
        """The readers ``item`` is read from: its group's base and inputs (and the auxiliary files)."""
        group = item.group
        readers = [group.base] if group.base is not None else []
        readers += [r for r in group.readers if r is not group.base]
        return readers + (list(self.aux.values()) if aux else [])

    def _release(self, item: PlanItem, rows: Span = None) -> None:
        for reader in self._all_readers(item):
            stored = self.stored_name(reader, item.name)
            if stored is not None:
                reader.release(stored, rows)

    # ---- the passes ------------------------------------------------------------------------------

    @contextmanager
    def vocab_prefetched(self, item: PlanItem) -> Iterator[None]:
        """While inside, ``item``'s reads give its inputs re-indexed to the output vocabulary (a no-op
        for other tensors): ``_read`` takes them as tensors already on the device."""
        if not item.vocab:
            yield
            return
        readers = {Path(r.path).resolve(): r for r in self._all_readers(item, aux=False)}
        ordered = [(path, readers[path]) for path in item.group.order if path in readers]
        tensors = [(path, self._read(reader, item.name, ("vocab", k))) for k, (path, reader) in enumerate(ordered)]
        base = item.group.base
        permuted = permute_embeddings(self.vocab, tensors, Path(base.path).resolve() if base is not None else None,
                                      item.name)
        self._prefetched = {(id(reader), item.name, None): x for (_, reader), x in zip(ordered, permuted)}
        try:
            yield
        finally:
            self._prefetched = {}
