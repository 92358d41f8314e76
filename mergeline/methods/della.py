"""DELLA: Drop and rEscaLe via sampLing with mAgnitude (Deep, Bhardwaj, Poria, "DELLA-Merging: Reducing
Interference in Model Merging through Magnitude-Based Sampling", arXiv 2406.11617).

MAGPRUNE, per row of each task vector τ_t (a 1-D tensor is one row; rows run along dim 1): rank the
n entries of the row by magnitude, r = 0 for the smallest, n − 1 for the largest, and keep entry j with

    p_j = (d − ε) + 2ε · r_j / (n − 1)          m_j ~ Bernoulli(p_j),     τ̃_t = m ⊙ τ_t · s_t

so small magnitudes survive with probability d − ε, large ones with d + ε (d = ``density``, ε =
``epsilon``; 0 < d ± ε < 1 is required when d < 1). Then the task-arithmetic family's merge:

    θ = θ0 + λ · disjoint_mean(elect(w_t τ̃_t))        (``della``: sign election, normalize: true)
    θ = θ0 + λ Σ_t w_t τ̃_t                             (``della_linear``: normalize: false)

Defaults follow mergekit 0.1.5 (``della`` / ``della_linear``): per-model ``weight`` (required),
``density`` 1, ``epsilon`` 0.15; ``rescale: true`` with s_t = ‖τ_t‖₁ / ‖m ⊙ τ_t‖₁ (matches the L1 norm
of each tensor; mergekit's choice; the paper's rescale is read as 1/p_j per survivor, unverified,
../shared/METHODS.md §7.7); ``lambda`` 1.

Randomness, as ``dare``: model i's mask on tensor ``name`` is drawn by ``torch.bernoulli`` on generators
seeded from sha256(seed, name, i) (on the CPU one per 2²⁰ entries, drawn in parallel; on CUDA one on
the GPU), so a merge reproduces bit for bit on the same kind of device and in any tensor order (a CPU
and a CUDA merge draw different masks). mergekit draws from torch's global RNG in its task-graph order instead, so whole merges
agree in distribution, not bit for bit; given the same generator state the mask is the same
(for tensors up to 2²⁰ entries; tests/unit/methods/test_method_della.py). Ties in magnitude are ranked by index (stable sort, the
same on CPU and CUDA); mergekit's unstable argsort may order them differently, which only moves
p_j by multiples of 2ε/(n − 1) among equal magnitudes. A row of one entry keeps it with p = d
(mergekit fails there: 0/0).

The CPU engine merges DELLA in row blocks (``_della_rows``: each row ranked, each mask drawn once,
the L1 norms summed over whole tensors as here), bit-equal to this whole-tensor path; CUDA, tensors
re-indexed to a tokenizer and direct calls take the whole-tensor path.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from mergeline.methods import register
from mergeline.methods._della_rows import (
    DRAW_CHUNK,
    RowState,
    UniformDraws,
    block_offset,
    l1_rescale,
    pack,
    uniform_dtype,
    unpack,
)
from mergeline.methods._fields import Consensus, SparseModel, TaskArithmeticFamilyParameters
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods._sparsify import apply_mask, tensor_seed
from mergeline.methods.base import MethodParameters, ModelParameters, TensorInputs

_RANK_CHUNK = 1 << 20  # entries ranked at once (per thread): bounds the sort's int64 indices to 8 MB


class DellaModel(SparseModel):
    epsilon: float = Field(
        0.15, ge=0.0, description="Half-width ε of the keep probabilities around density: p ∈ [d − ε, d + ε]."
    )

    @field_validator("epsilon")
    @classmethod
    def _probabilities_in_range(cls, epsilon: float, info: ValidationInfo) -> float:
        density = info.data.get("density", 1.0)
        if density < 1.0 and not (0.0 < density - epsilon and density + epsilon < 1.0):
            raise ValueError(f"density ± epsilon must lie in (0, 1) (density {density})")
        return epsilon


class DellaLinearParameters(TaskArithmeticFamilyParameters):
    rescale: bool = Field(True, description="Rescale each pruned task vector to its L1 norm (mergekit default: true).")
    seed: int = Field(0, ge=0, description="Seed of the sampled masks (combined with tensor name and model index).")


class DellaParameters(DellaLinearParameters):
    normalize: bool = Field(True, description="Disjoint mean (true, mergekit default) or disjoint sum (false).")
    consensus_method: Consensus = Field(
        "sum", description="Sign election: 'sum' of weighted deltas (TIES) or 'count' of signs."
    )


_SORT_KEY = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
             torch.float16: torch.int16}
_pool: ThreadPoolExecutor | None = None


def _rank_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="mergeline-della")
    return _pool


def _rank_rows(rows: torch.Tensor, out: torch.Tensor, density: float, epsilon: float) -> None:
    """``out`` = (d − ε) + 2ε · rank/(n − 1) for a block of rows (ranks along dim 1)."""
    n = rows.shape[1]
    magnitudes = rows.abs()
    # |x| ≥ 0, so its IEEE bit pattern read as a signed integer orders like the value: a stable sort
    # of the integers is the stable sort of the magnitudes, about 1.4x faster on the CPU.
    key = _SORT_KEY.get(magnitudes.dtype)
    order = torch.sort(magnitudes if key is None else magnitudes.view(key), dim=1, stable=True).indices
    del magnitudes
    shape = [1] * rows.dim()
    shape[1] = n
    ranks = torch.arange(n, dtype=rows.dtype, device=rows.device).reshape(shape).expand_as(rows)
    out.scatter_(1, order, ranks)  # out[order[r]] = r: each entry's rank
    del order
    out.div_(n - 1).clamp_(0, 1).mul_(2).mul_(epsilon).add_(density - epsilon)


def keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """p = (d − ε) + 2ε · rank/(n − 1) per row (dim 1) of ``delta``, in its dtype; same shape.

    On the CPU, blocks of rows are ranked on a pool of threads (torch's sort runs on one core).
    """
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    n = rows.shape[1]
    probs = torch.empty_like(rows)
    if rows.numel() == 0:
        return probs.reshape(delta.shape)
    if n == 1:
        return probs.fill_(density).reshape(delta.shape)
    per_chunk = max(1, _RANK_CHUNK // max(1, rows[0].numel()))
    starts = range(0, rows.shape[0], per_chunk)
    work = lambda s: _rank_rows(rows[s:s + per_chunk], probs[s:s + per_chunk], density, epsilon)  # noqa: E731
    if rows.is_cuda or len(starts) == 1:
        for start in starts:
            work(start)
    else:
        list(_rank_pool().map(work, starts))
    return probs.reshape(delta.shape)


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of draw chunk ``chunk`` of a mask seeded with ``seed`` (chunk 0: ``seed``)."""
    if chunk == 0:
        return seed
    digest = hashlib.sha256(f"{seed}\x00{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def magprune_mask(delta: torch.Tensor, density: float, epsilon: float, seed: int) -> torch.Tensor:
    """MAGPRUNE's 0/1 mask (delta's dtype and device).

    On the CPU the flat mask is drawn in chunks of DRAW_CHUNK entries, chunk k from its own generator
    seeded with ``chunk_seed(seed, k)``, side by side on the thread pool (one generator draws serially:
    ~15 ns an entry). A tensor of at most DRAW_CHUNK entries is one draw of ``torch.bernoulli`` seeded
    with ``seed``, the draw mergekit makes from the same generator state. On CUDA the whole mask is one
    ``torch.bernoulli`` on a generator of the GPU seeded with ``seed`` (mergekit ``--cuda`` draws on the
    GPU too): a stream of its own, the same on every run on that kind of device.
    """
    probs = keep_probabilities(delta, density, epsilon)
    if probs.is_cuda:
        return torch.bernoulli(probs, generator=torch.Generator(device=probs.device).manual_seed(seed))
    flat = probs.reshape(-1)

    def draw(k: int) -> None:
        part = flat[k * DRAW_CHUNK:(k + 1) * DRAW_CHUNK]
        generator = torch.Generator(device="cpu").manual_seed(chunk_seed(seed, k))
        # in place (each entry's p is read before its draw is written): torch.bernoulli(part)'s draws
        part.bernoulli_(part, generator=generator)

    chunks = range(-(-flat.numel() // DRAW_CHUNK))
    if len(chunks) <= 1:
        list(map(draw, chunks))
    else:
        list(_rank_pool().map(draw, chunks))
    return probs


class _Della(TaskArithmeticFamily):
    paper = "arXiv:2406.11617"
    PerModel = DellaModel
    row_separable = True  # in row blocks of whole rows (dim 1), with per-tensor statistics: _della_rows
    vectors_whole = True  # a 1-D tensor is one row

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._rows: dict[str, RowState] = {}
        self._magnitudes: torch.Tensor | None = None  # |τ| of one model's whole tensor (the L1 sums)
        self._lock = threading.Lock()
        # the whole-tensor path's torch threads (the engine merges row blocks with torch on one thread)
        self._threads = torch.get_num_threads()

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        mp = inputs.model_params[position]
        if mp.density >= 1.0:
            return delta
        seed = tensor_seed(inputs.params.seed, inputs.name, inputs.model_index[position])
        mask = magprune_mask(delta, float(mp.density), float(mp.epsilon), seed)
        return apply_mask(delta, mask, "l1" if inputs.params.rescale else None, into_mask=True)

    # ---- row blocks: each pass draws masks; with rescale, one pass per pruned model sums its norms ----
    def begin_tensor(self, name: str, numel: int, model_index: list[int], model_params: list[ModelParameters],
                     sample: list[torch.Tensor] | None) -> bool:
        self._rows[name] = RowState(numel, [i for i, mp in enumerate(model_params) if mp.density < 1.0])
        return bool(self._rows[name].pruned)

    def _buffer(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            if self._magnitudes is None or self._magnitudes.numel() < numel or self._magnitudes.dtype != dtype:
                self._magnitudes = torch.empty(numel, dtype=dtype)
            return self._magnitudes[:numel]

    def _draws(self, state: RowState, position: int, inputs: TensorInputs, delta: torch.Tensor) -> UniformDraws:
        with state.lock:
            if position not in state.draws:
                seed = tensor_seed(inputs.params.seed, inputs.name, inputs.model_index[position])
                state.draws[position] = UniformDraws(lambda k: chunk_seed(seed, k), state.numel, uniform_dtype(delta))
            return state.draws[position]

    def observe_block(self, inputs: TensorInputs) -> tuple[bool, list[tuple[int, int, int, np.ndarray]]]:
        """This block's masks (position, offset, length, bits); with rescale, the model of this pass only,
        and its |τ| written into the block's place in the tensor-sized buffer."""
        state = self._rows[inputs.name]
        rescale = bool(inputs.params.rescale)
        offset = block_offset(inputs)
        seen = []
        for position in [state.pruned[state.current]] if rescale else state.pruned:
            delta, mp = inputs.tensors[position], inputs.model_params[position]
            draws = self._draws(state, position, inputs, delta)
            draws.prepare(offset, offset + delta.numel())
            probs = keep_probabilities(delta, float(mp.density), float(mp.epsilon))
            uniforms = draws.take(offset, offset + delta.numel())
            mask = uniforms.view(delta.shape) < probs.to(uniforms.dtype)
            seen.append((position, offset, delta.numel(), pack(mask)))
            if rescale:
                torch.abs(delta, out=self._buffer(state.numel, delta.dtype)[offset:offset + delta.numel()].view(delta.shape))
        return rescale, seen

    def end_observation(self, name: str, observations: list[tuple[bool, list[tuple[int, int, int, np.ndarray]]]]) -> bool:
        state = self._rows[name]
        blocks = [entry for _, seen in observations for entry in seen]
        for position, offset, _, bits in blocks:
            state.masks[(position, offset)] = bits
        if not observations[0][0]:  # no rescale: every mask is drawn
            return True
        position = state.pruned[state.current]
        buffer = self._buffer(state.numel, self._magnitudes.dtype)  # type: ignore[union-attr]
        state.scales[position] = l1_rescale(buffer, [(o, n, bits) for _, o, n, bits in blocks], self._threads)
        state.current += 1
        return state.current == len(state.pruned)

    def finish_tensor(self, name: str) -> None:
        self._rows.pop(name, None)

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        state = self._rows.get(inputs.name)
        if state is None:  # a whole tensor outside the engine's row blocks
            return super().merge_tensor(inputs)
        offset = block_offset(inputs)
        deltas = []
        for position, delta in enumerate(inputs.tensors):
            if position not in state.pruned:
                deltas.append(delta)
                continue
            # as apply_mask(delta, mask, into_mask=True): m ⊙ δ, then × ‖τ‖₁ / ‖m ⊙ τ‖₁
            masked = unpack(state.masks[(position, offset)], delta, inputs.scratch(("magprune", position), delta))
            masked.mul_(delta)
            scale = state.scales.get(position)
            deltas.append(masked if scale is None else masked.mul_(scale))
        return self.combine(deltas, inputs)

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["seed"] = self.params.seed
        return out


@register
class Della(_Della):
    """θ = θ0 + λ · disjoint_mean(elect(w_t MAGPRUNE(τ_t)))."""

    name = "della"
    Parameters = DellaParameters
    uses_consensus: ClassVar[bool] = True


@register
class DellaLinear(_Della):
    """θ = θ0 + λ Σ_t w_t MAGPRUNE(τ_t)."""

    name = "della_linear"
    Parameters = DellaLinearParameters
