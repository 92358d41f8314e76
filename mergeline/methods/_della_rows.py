"""DELLA's MAGPRUNE in row blocks (the CPU engine's streaming path), bit-equal to the whole-tensor path.

MAGPRUNE ranks each row (dim 1) on its own, so a row block of whole rows gets the same keep
probabilities as the whole tensor. What is tensor-wide is (a) the mask's random stream, drawn in flat
chunks of ``DRAW_CHUNK`` entries from generators seeded per chunk, and (b) the L1 rescale
s = ‖τ‖₁ / ‖m ⊙ τ‖₁. Both are reproduced exactly:

(a) ``torch.bernoulli`` with a tensor of probabilities p draws one uniform u per entry from the
    generator, in flat order, and keeps the entry when u < p; ``torch.rand`` draws the same uniforms.
    So the uniforms of a chunk are drawn once (:class:`UniformDraws`) and every block that overlaps
    the chunk compares its slice with its own p: the same mask as the whole tensor's draw.
(b) float32 sums depend on their reduction order (and torch's order on its thread count), so the
    two norms are summed exactly as the whole-tensor path sums them: one model at a time (one
    observation pass each), every block writes |τ| into its place of one tensor-sized buffer, and
    ``end_observation`` sums it in the order torch sums it on as many threads as the whole-tensor
    path would use (the merging thread's count when the method was made; :func:`threaded_sum`),
    multiplies it by the mask block by block and sums again. The masks are kept packed (one bit an entry) for the merge
    pass, which then only unpacks them: each mask is drawn and each row sorted once.

Memory: the buffer (one float32 copy of the largest tensor), the packed masks (n/8 bytes per model),
and the uniforms of the chunks that blocks in flight overlap; the inputs are row blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from mergeline.methods._sparsify import _RESCALE_EPS
from mergeline.methods.base import TensorInputs

DRAW_CHUNK = 1 << 20  # entries of the mask drawn from one generator (see magprune_mask)
_GRAIN = 32768  # torch's at::internal::GRAIN_SIZE: the fewest entries a thread of a parallel sum gets


def uniform_dtype(probs: torch.Tensor) -> torch.dtype:
    """The dtype of ``torch.bernoulli``'s uniforms for these probabilities: double for double, else float."""
    return torch.float64 if probs.dtype == torch.float64 else torch.float32


class UniformDraws:
    """The uniforms of one mask, chunk by chunk, each drawn once and shared by the blocks overlapping it.

    Chunk k (``DRAW_CHUNK`` entries, the last shorter) comes from a CPU generator seeded with
    ``seeds(k)``. A chunk is dropped once blocks have taken all of its entries (blocks tile the
    tensor, so each entry is taken once per pass); a thread that needs a chunk another thread is
    drawing waits for it.
    """

    def __init__(self, seeds, numel: int, dtype: torch.dtype) -> None:
        self.seeds = seeds
        self.numel = numel
        self.dtype = dtype
        self._lock = threading.Lock()
        self._chunks: dict[int, Future[torch.Tensor]] = {}
        self._taken: dict[int, int] = {}

    def _chunk(self, k: int, wait: bool = True) -> torch.Tensor | None:
        """Chunk k's uniforms: drawn here if no thread has started them, else (``wait``) waited for."""
        with self._lock:
            future = self._chunks.get(k)
            mine = future is None
            if mine:
                future = self._chunks[k] = Future()
        if mine:
            size = min(DRAW_CHUNK, self.numel - k * DRAW_CHUNK)
            try:
                generator = torch.Generator(device="cpu").manual_seed(self.seeds(k))
                future.set_result(torch.rand(size, generator=generator, dtype=self.dtype))
            except BaseException as exc:
                future.set_exception(exc)
                raise
        return future.result() if mine or wait else None

    def _span(self, start: int, stop: int) -> range:
        return range(start // DRAW_CHUNK, (stop - 1) // DRAW_CHUNK + 1)

    def prepare(self, start: int, stop: int) -> None:
        """Draw the chunks of [start, stop) that no thread has started (called before the block's sort,
        so a thread that needs a chunk another one draws sorts meanwhile instead of waiting)."""
        for k in self._span(start, stop):
            self._chunk(k, wait=False)

    def take(self, start: int, stop: int) -> torch.Tensor:
        """The uniforms of flat entries [start, stop)."""
        parts = []
        for k in self._span(start, stop):
            lo, hi = max(start, k * DRAW_CHUNK), min(stop, (k + 1) * DRAW_CHUNK)
            chunk = self._chunk(k)
            assert chunk is not None
            parts.append(chunk[lo - k * DRAW_CHUNK:hi - k * DRAW_CHUNK])
            with self._lock:
                self._taken[k] = self._taken.get(k, 0) + hi - lo
                if self._taken[k] >= min(DRAW_CHUNK, self.numel - k * DRAW_CHUNK):
                    del self._chunks[k], self._taken[k]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def block_offset(inputs: TensorInputs) -> int:
    """Flat index of the first entry of ``inputs``' row block (0 for a whole tensor)."""
    if inputs.rows is None:
        return 0
    first = inputs.tensors[0]
    return inputs.rows[0] * (first[0].numel() if first.dim() else 1)


@dataclass
class RowState:
    """MAGPRUNE of one tensor in progress: which input positions are pruned, whose norms are being
    summed (``current``), the packed masks by (position, flat offset), and the rescale factors."""

    numel: int
    pruned: list[int]
    current: int = 0  # index into ``pruned`` of the observation pass under way
    draws: dict[int, UniformDraws] = field(default_factory=dict)
    masks: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (position, offset): bits
    scales: dict[int, torch.Tensor | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def pack(mask: torch.Tensor) -> np.ndarray:
    """A boolean mask as bits (one byte per 8 entries, flat order)."""
    return np.packbits(mask.reshape(-1).numpy())


def unpack(bits: np.ndarray, like: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``bits`` (from :func:`pack`) as a 0/1 tensor shaped like ``like`` in ``out``'s dtype."""
    values = torch.from_numpy(np.unpackbits(bits, count=like.numel()))
    return out.copy_(values.view(like.shape))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch ops of this thread run on ``count`` threads inside; its setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threaded_sum(flat: torch.Tensor, threads: int) -> torch.Tensor:
    """``flat.sum()`` as torch computes it on the CPU with ``threads`` threads, computed on this thread.

    Torch sums a large tensor in two passes: ``min(threads, ⌈n / GRAIN⌉)`` consecutive chunks of
    ⌈n / that⌉ entries are summed apart (each as one thread's serial sum), then the ``threads`` partial
    sums (zeros for threads without a chunk) are summed; below ``GRAIN`` entries, or on one thread, it
    is one serial sum. The bits depend on that split, so the whole-tensor path's sum is reproduced by
    the same split, here. (Sums on threads of busy cores wait at torch's barrier: on this project's
    2-core machine 10x slower than one thread.) tests/unit/methods/test_della_rows.py checks it
    against torch's own for several sizes and thread counts.
    """
    n = flat.numel()
    with torch_threads(1):
        if threads <= 1 or n < _GRAIN:
            return flat.sum()
        used = min(threads, -(-n // _GRAIN))
        size = -(-n // used)
        partial = torch.zeros(threads, dtype=flat.dtype)
        for t in range(used):
            if t * size < n:
                partial[t] = flat[t * size:(t + 1) * size].sum()
        return partial.sum()


def l1_rescale(buffer: torch.Tensor, masks: list[tuple[int, int, np.ndarray]], threads: int) -> torch.Tensor | None:
    """The rescale factor ‖τ‖₁ / ‖m ⊙ τ‖₁ from ``buffer`` = |τ| (flat, the whole tensor) and the mask's
    blocks (offset, length, bits), as ``apply_mask`` computes it on the whole tensor with torch on
    ``threads`` threads; None where a norm is below its tolerance (no rescale). Leaves m ⊙ |τ| in
    ``buffer``."""
    before = threaded_sum(buffer, threads)
    for offset, length, bits in masks:
        part = buffer[offset:offset + length]
        part.mul_(unpack(bits, part, torch.empty_like(part)))
    after = threaded_sum(buffer, threads)
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return None
    return before / after
