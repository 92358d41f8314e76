"""The engine's GPU loop: whole tensors, fetched ahead with positioned reads, merged on one stream.

On CUDA the merge of a tensor is a few milliseconds of GPU work; what costs is moving bytes. So the
plan's tensors are fetched ahead (:class:`~mergeline.io.prefetch.TensorPrefetcher`: a pool of threads
reads each input's bytes into pinned slabs and copies them to the device on streams of their own) up
to ``PREFETCH_BYTES`` beyond the tensor being merged, while the main thread merges whole tensors on
its stream, without waiting for the GPU: the result crosses back into a pinned output buffer that
the writer thread writes once the transfer's event has fired, and the output's NaN/Inf test is read
one tensor later. Methods see whole tensors, as on the CPU for methods that need them whole.

Device memory: the fetched-ahead bytes (at most ``PREFETCH_BYTES`` plus one tensor of every input),
and the compute buffers of one tensor (one per input in the compute dtype, plus the method's own).
"""

from __future__ import annotations

from typing import Any

import torch

from mergeline.io.prefetch import Fetched, TensorPrefetcher
from mergeline.merge.inputs import PlanItem, Span

# Devices the engine merges this way (the CPU merges row blocks in cache; tests add "cpu" to run
# this loop without a GPU).
PREFETCH_DEVICES = ("cuda",)
PREFETCH_BYTES = 1 << 30
# Readers take the GIL between their reads: on the H100 host (16 cores) 4 threads reading 32 MB
# pieces moved 12 GB/s to the GPU in every run, 8 threads 9 to 15 GB/s from run to run, 16 threads
# 6 to 8, one thread 5 (the loader probe in benchmarks/README.md).
PREFETCH_THREADS = 4


def prefetches(device: torch.device) -> bool:
    """Whether the engine merges on ``device`` with this loop."""
    return device.type in PREFETCH_DEVICES


class PrefetchFeed:
    """Fetches the plan's floating-point tensors in order, up to ``PREFETCH_BYTES`` ahead."""

    def __init__(self, engine: Any, items: list[PlanItem]) -> None:
        self.engine = engine
        self.work = [it for it in items if it.floating and it.alias_of is None and not it.vocab]
        self.loader = TensorPrefetcher(engine.device, PREFETCH_THREADS)
        self.next = 0
        self.ahead: dict[str, dict[tuple[int, str, Span], Fetched]] = {}
        self.bytes_ahead = 0
        self.unchecked: list[tuple[PlanItem, torch.Tensor]] = []  # outputs whose finite test is pending

    def _submit(self) -> None:
        item = self.work[self.next]
        self.next += 1
        rows = (0, item.out.shape[0]) if item.cut else None
        stored = [(reader, self.engine.stored_name(reader, item.name)) for reader in self.engine._all_readers(item)]
        fetched = {(id(reader), name, rows): self.loader.fetch(reader, name, rows) for reader, name in stored
                   if name is not None}
        self.ahead[item.name] = fetched
        self.bytes_ahead += sum(f.nbytes for f in fetched.values())

    def take(self, item: PlanItem) -> dict[tuple[int, str, Span], torch.Tensor]:
        """``item``'s inputs on the device (the current stream waits for them), keyed as
        ``MergeInputs._read`` looks them up; fetches further ahead first."""
        while item.name not in self.ahead:
            self._submit()
        fetched = self.ahead.pop(item.name)
        self.bytes_ahead -= sum(f.nbytes for f in fetched.values())
        while self.next < len(self.work) and self.bytes_ahead < PREFETCH_BYTES:
            self._submit()
        return {key: self.loader.wait(f) for key, f in fetched.items()}

    def check_later(self, item: PlanItem, result: torch.Tensor) -> None:
        """Queue ``result``'s finite test; the test of the tensor before it is read now (its GPU work
        is done or nearly), so the host rarely waits for the GPU."""
        self.check_pending(keep=0)
        self.unchecked.append((item, torch.isfinite(result).all()))

    def check_pending(self, keep: int = 0) -> None:
        while len(self.unchecked) > keep:
            item, finite = self.unchecked.pop(0)
            if not bool(finite):
                self.engine._blame_nonfinite(item, None)

    def close(self) -> None:
        self.loader.close()


class PrefetchedTensors:
    """Mixed into the engine: one whole tensor of the GPU loop (see the module's docstring)."""

    def _whole_prefetched(self, method: Any, item: PlanItem, sink: Any, keep: list[torch.Tensor] | None,
                          feed: PrefetchFeed) -> None:
        self._prefetched = feed.take(item)
        try:
            inputs = self.inputs_for(item)
            result = self._finish(item, method.merge_tensor(inputs), inputs, item.out.shape)
        finally:
            self._prefetched = {}
        stored = result if result.dtype == item.out.dtype else result.to(item.out.dtype)
        feed.check_later(item, stored)  # every method, in the dtype written (see MergeInputs._check_output)
        out, give_back = self.ring.take(item.out.shape, item.out.dtype)
        event = None
        if self.device.type == "cuda":
            out.copy_(stored, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            out.copy_(stored)
        if keep is not None:
            if event is not None:
                event.synchronize()
            keep.append(out.clone())
        sink.begin(item.name)
        sink.block(out, give_back, event)
        sink.end()
