"""The merge engine's tensor loop (:class:`Engine`): the open readers, the plan, and how each tensor is merged.

On the CPU, row-separable methods (TA, linear, per-tensor TIES) are merged in cache-sized row blocks
spread over one thread per core (torch single-threaded in each). A method may ask for a per-tensor
statistics pass over the same blocks first (TIES: each model's cut-off magnitude and tie budget;
``MergeMethod.begin_tensor``). Memory: a few blocks per thread, two output chunks, the mapped pages of
one chunk of each input. On CUDA every method gets whole tensors, read ahead with positioned reads
and merged on the GPU without waiting for it (``mergeline.merge.prefetch``). A writer thread writes
each output chunk while the next is merged, and a thread per shard hashes what it flushed. Every
output is checked for NaN/Inf in the dtype it is written in (an overflow, λ = 1e308, is refused like a
NaN input); methods that declare ``nonfinite_propagates`` (TA, TIES) skip the input checks, and the
inputs are inspected only when the output is not finite, to name the tensor.

``mergeline.merge.engine`` plans, prepares and runs a whole merge around it (``run_merge``).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import torch

from mergeline.io.safetensors_io import CheckpointReader, ShardedWriter
from mergeline.merge.config import MergeConfig
from mergeline.merge.inputs import MergeInputs, PlanItem, Span
from mergeline.merge.lora_reader import open_checkpoint
from mergeline.merge.prefetch import PrefetchedTensors, PrefetchFeed, prefetches
from mergeline.merge.support import AsyncSink, Buffers, OutputRing, limit_malloc_arenas, single_threaded_torch
from mergeline.methods import MergeMethod, TensorInputs

Progress = Callable[[str], None]
# Row-separable methods merge a tensor in row blocks of about BLOCK_ELEMENTS entries on the CPU (every
# pass of the method over a block then stays in cache), spread over a pool of threads, and hand the
# writer thread output chunks of about CHUNK_ELEMENTS entries.
BLOCK_ELEMENTS = 1 << 17
CHUNK_ELEMENTS = 1 << 24


class Engine(MergeInputs, PrefetchedTensors):
    """One merge: the open readers, the plan (:class:`MergeInputs`), and the tensor loop."""

    def __init__(self, config: MergeConfig, device: torch.device, progress: Progress | None,
                 readers: Mapping[str, CheckpointReader] | None = None) -> None:
        self.config = config
        self.memory = dict(readers or {})  # inputs already in memory, by the name the config gives them
        self.device = device
        self.progress = progress or (lambda line: None)
        self.method_cls = config.method_class()
        self.compute = config.compute_dtype()
        self.out_dtype = config.output_dtype()
        self.stack = ExitStack()
        self.aux: dict[str, CheckpointReader] = {}  # model_inputs / global_inputs, by path
        self.aux_aliases: dict[int, dict[str, str]] = {}  # each aux reader's tensor aliases, by reader id
        self.checked: set[tuple[int, str, Any]] = set()  # (reader id, tensor, rows) checked for NaN/Inf
        self.row_separable = False  # set by use(method)
        self.vectors_whole = False
        self.check_inputs = True
        self._local = threading.local()  # per-thread buffers: pool threads merge blocks side by side
        self._prefetched: dict[tuple[int, str, Span], torch.Tensor] = {}  # the GPU loop's current inputs
        self.prefetch = prefetches(device)
        self.workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
        self.block_elements = BLOCK_ELEMENTS
        self.ring = OutputRing(3 if self.prefetch else 2, pin=device.type == "cuda")

    def use(self, method: MergeMethod) -> None:
        """How to run ``method``: in row blocks or whole tensors; NaN/Inf checked on inputs or output."""
        self.row_separable = bool(method.row_separable)
        self.vectors_whole = method.vectors_whole
        self.check_inputs = not method.nonfinite_propagates

    @property
    def buffers(self) -> Buffers:
        local = self._local.__dict__
        if "buffers" not in local:
            local["buffers"] = Buffers(self.device)
        return local["buffers"]

    @property
    def staging(self) -> Buffers:
        """This thread's pinned host buffers (CUDA): the mapped bytes are copied here, then transferred."""
        local = self._local.__dict__
        if "staging" not in local:
            local["staging"] = Buffers(torch.device("cpu"), pin=True)
        return local["staging"]

    def _sync(self) -> None:
        """On CUDA, wait for this thread's stream: its staging and output buffers may then be reused."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def workspace(self, key: object, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Scratch for a method's block (this thread's, reused): shaped like ``like``."""
        return self.buffers.take(("ws", key), like.shape, dtype or like.dtype)

    def open(self, path: str) -> CheckpointReader:
        if path in self.memory:
            return self.memory[path]
        return self.stack.enter_context(open_checkpoint(path))

    def statistics(self, method: MergeMethod, items: list[PlanItem]) -> None:
        work = [it for it in items if it.floating and it.alias_of is None]
        for p in range(method.statistics_passes()):
            self.progress(f"statistics pass {p + 1}/{method.statistics_passes()} over {len(work)} tensors")
            for item in work:
                with self.vocab_prefetched(item):
                    method.accumulate(self.inputs_for(item), p)
                self._sync()  # the next read may reuse this one's pinned staging buffers
            method.finalize_statistics(p)

    def _layout(self, item: PlanItem) -> tuple[list[Span], list[list[int]]]:
        """Row blocks of a tensor (row-separable methods), and the chunks (lists of consecutive blocks)
        handed to the writer one at a time."""
        shape = item.out.shape
        numel = math.prod(shape)
        if len(shape) == 0 or numel <= self.block_elements or (len(shape) == 1 and self.vectors_whole):
            return [None], [[0]]
        row = max(1, math.prod(shape[1:]))
        block_rows = max(1, self.block_elements // row)
        chunk_rows = max(block_rows, CHUNK_ELEMENTS // row // block_rows * block_rows)
        spans: list[Span] = [(r, min(r + block_rows, shape[0])) for r in range(0, shape[0], block_rows)]
        per_chunk = chunk_rows // block_rows
        chunks = [list(range(c, min(c + per_chunk, len(spans)))) for c in range(0, len(spans), per_chunk)]
        return spans, chunks

    def _finish(self, item: PlanItem, result: torch.Tensor, inputs: TensorInputs, expected: Sequence[int]) -> torch.Tensor:
        if tuple(result.shape) != tuple(expected):
            raise RuntimeError(f"{self.method_cls.name} returned shape {tuple(result.shape)} for {item.name!r}")
        if self.method_cls.kind == "delta":
            assert inputs.base is not None
            # θ = θ_base + Δ, in place: the method's result is the engine's to reuse
            # (float addition commutes, so this equals mergekit's base + Δ bit for bit).
            result = result.add_(inputs.base) if result.dtype == self.compute else inputs.base + result
        return result

    def _merge_block(self, method: MergeMethod, item: PlanItem, spans: list[Span], b: int, out: torch.Tensor) -> None:
        """Merge row block ``b`` into ``out`` (its place in the output chunk); runs in a pool thread."""
        span = spans[b]
        inputs = self.inputs_for(item, span, block=b)
        expected = item.out.shape if span is None else (span[1] - span[0], *item.out.shape[1:])
        result = self._finish(item, method.merge_tensor(inputs), inputs, expected)
        out.copy_(result, non_blocking=out.is_pinned())
        self._sync()
        self._check_output(item, span, out)  # every method, in the dtype written: overflow is refused too

    def _observe(self, method: MergeMethod, item: PlanItem, spans: list[Span], b: int) -> Any:
        """Statistics of row block ``b``; runs in a pool thread."""
        seen = method.observe_block(self.inputs_for(item, spans[b], block=b))
        self._sync()
        return seen

    def _rows(self, method: MergeMethod, item: PlanItem, pool: ThreadPoolExecutor, sink: AsyncSink,
              keep: list[torch.Tensor] | None) -> None:
        """One tensor of a row-separable method: statistics (if the method wants them), then chunks."""
        spans, chunks = self._layout(item)
        numel = math.prod(item.out.shape)

        def rows_of(chunk: list[int]) -> tuple[int, int]:
            first, last = spans[chunk[0]], spans[chunk[-1]]
            return (0, item.out.shape[0] if item.out.shape else 1) if first is None else (first[0], last[1])  # type: ignore[index]

        index = method.tensor_sample(item.name, numel)
        sample = None
        if index is not None:
            sample = self._sample(item, index, chunks, spans)
        if method.begin_tensor(item.name, numel, list(item.group.inputs), item.model_params, sample):
            done = False
            while not done:
                observations: list[Any] = []
                for chunk in chunks:
                    observations += pool.map(lambda b: self._observe(method, item, spans, b), chunk)
                    self._release(item, rows_of(chunk) if spans[0] is not None else None)
                done = method.end_observation(item.name, observations)
        sink.begin(item.name)
        for chunk in chunks:
            r0, r1 = rows_of(chunk)
            shape = item.out.shape if spans[0] is None else (r1 - r0, *item.out.shape[1:])
            out, give_back = self.ring.take(shape, item.out.dtype)

            def run(b: int, out: torch.Tensor = out, r0: int = r0) -> None:
                span = spans[b]
                view = out if span is None else out[span[0] - r0:span[1] - r0]
                self._merge_block(method, item, spans, b, view)

            list(pool.map(run, chunk))  # each block's transfer back is complete when its task returns
            self._release(item, (r0, r1) if spans[0] is not None else None)
            if keep is not None:
                keep.append(out.clone())
            sink.block(out, give_back)
        sink.end()
        method.finish_tensor(item.name)
        self._release(item)

    def _sample(self, item: PlanItem, index: torch.Tensor, chunks: list[list[int]], spans: list[Span]) -> list[torch.Tensor]:
        """Each input's entries at the flat positions ``index`` (order irrelevant), gathered chunk by
        chunk: random positions touch nearly every page of a tensor, and dropping the pages after each
        chunk keeps the mapped bytes to a chunk's, not the whole tensor's of every input."""
        index, _ = torch.sort(index)
        row = max(1, math.prod(item.out.shape[1:])) if item.out.shape else 1
        bounds = [spans[chunk[-1]][1] * row for chunk in chunks[:-1] if spans[chunk[-1]] is not None]
        cuts = torch.searchsorted(index, torch.tensor(bounds, dtype=index.dtype)).tolist() if bounds else []
        parts: list[list[torch.Tensor]] = []
        for start, stop in zip([0, *cuts], [*cuts, index.numel()]):
            if stop > start:
                parts.append([t.clone() for t in self.inputs_for(item, index=index[start:stop]).tensors])
                self._sync()
                self._release(item)
        return [torch.cat([part[i] for part in parts]) for i in range(len(parts[0]))]

    def _whole(self, method: MergeMethod, item: PlanItem, sink: AsyncSink, keep: list[torch.Tensor] | None) -> None:
        """One tensor of a method that needs it whole."""
        inputs = self.inputs_for(item)
        result = self._finish(item, method.merge_tensor(inputs), inputs, item.out.shape)
        self._sync()
        out, give_back = self.ring.take(item.out.shape, item.out.dtype)
        out.copy_(result)
        self._check_output(item, None, out)
        if keep is not None:
            keep.append(out.clone())
        sink.begin(item.name)
        sink.block(out, give_back)
        sink.end()

    def write_all(self, method: MergeMethod, items: list[PlanItem], writer: ShardedWriter) -> None:
        """Merge every tensor in plan order and stream it to ``writer`` (through the writer thread).

        A tied alias reuses its first tensor's result.
        """
        aliased = {it.alias_of for it in items if it.alias_of}
        kept: dict[str, list[torch.Tensor]] = {}
        step = max(1, len(items) // 10)
        limit_malloc_arenas()
        # No more threads than the largest tensor has blocks: each holds its own block buffers.
        largest = max((math.prod(it.out.shape) for it in items if it.floating), default=0)
        workers = max(1, min(self.workers, -(-largest // self.block_elements)))
        sink = AsyncSink(writer)
        feed = PrefetchFeed(self, items) if self.prefetch else None
        rows = self.row_separable and feed is None
        pool = ThreadPoolExecutor(workers if rows else 1, thread_name_prefix="mergeline-merge",
                                  initializer=single_threaded_torch)
        threads = torch.get_num_threads()
        if rows:
            single_threaded_torch()  # this thread's share (samples, cut-offs) runs beside the pool's
        try:
            for k, item in enumerate(items):
                keep = kept.setdefault(item.name, []) if item.name in aliased else None
                if item.alias_of is not None:
                    sink.begin(item.name)
                    for block in kept.pop(item.alias_of):
                        sink.block(block)
                    sink.end()
                elif not item.floating:
                    sink.begin(item.name)
                    sink.block((item.group.base or item.group.readers[0]).get(item.name))
                    sink.end()
                elif item.vocab:
                    with self.vocab_prefetched(item):
                        self._whole(method, item, sink, keep)
                elif feed is not None:
                    self._whole_prefetched(method, item, sink, keep, feed)
                elif rows:
                    self._rows(method, item, pool, sink, keep)
                else:
                    self._whole(method, item, sink, keep)
                if (k + 1) % step == 0 or k + 1 == len(items):
                    self.progress(f"merged {k + 1}/{len(items)} tensors")
            if feed is not None:
                feed.check_pending()
            sink.close()
        except BaseException:
            sink.abort()
            raise
        finally:
            pool.shutdown(wait=True)
            if feed is not None:
                feed.close()
            torch.set_num_threads(threads)  # the pool threads' setting is also torch's global default


