"""Row-separable per-tensor magnitude trim (TIES ``trim_scope: tensor``): statistics, then row blocks.

Keeping exactly the k largest |δ| of a tensor (ties at the cut-off: lowest flat index first) looks like a
whole-tensor operation, but it only needs, per tensor and model, the k-th largest magnitude ``cut`` and
how many entries equal to ``cut`` each row block may keep. Those come from one statistics pass over the
tensor's row blocks in flat order:

1. a fixed-seed sample of |δ| (``SAMPLE`` entries) brackets ``cut`` in a closed band [lo, hi];
2. every block reports how many magnitudes lie above ``hi``, how many equal ``hi`` and ``lo``, and the
   magnitudes strictly inside the band (a few percent of the entries), in flat order. Counting the
   ends instead of keeping them matters for bfloat16 task vectors: there one magnitude often holds
   15% of a tensor's entries, and ``lo == hi``;
3. ``cut`` is the (k − above)-th largest of the band; the ``k − #{|δ| > cut}`` entries equal to ``cut``
   that are kept are the first ones in flat order, so each block's share follows from the per-block
   counts of entries equal to ``cut``.

If the band misses (the sample was unlucky, or NaN made it meaningless), the statistics pass runs again
with a band that surely holds ``cut`` ([hi, ∞] or [0, lo]): exact in every case, never a sort.
Tensors of at most ``SMALL`` entries use the band [0, ∞] (all magnitudes) directly.

Which entries equal to ``cut`` are kept when they straddle the cut-off follows mergekit, whose
``torch.argsort(|δ|, descending=True)`` is unstable: its order among equal keys depends on the whole
tensor. Then (``TrimState.gather``) one more pass copies the blocks' magnitudes into one buffer of the
tensor (``TrimState.buffer``, each block into its own place; on the device and in the dtype mergekit
sorts there: ``_sparsify.sort_keys``), the same argsort runs on it, and
the kept entries are stored as a mask (``Cut.mask``). A pass gathers the models' magnitudes up to
``GATHER_ENTRIES`` entries in all (at least one model; the others in further passes), so a large
tensor (an embedding) holds one buffer and one sort at a time, not one per model, while small tensors
take no extra pass. Without such ties the counts alone decide.

The merge pass then trims each block with :func:`block_mask`: ``|δ| > cut``, plus the block's share
of entries equal to ``cut`` (all or none), or the block's slice of the stored mask.
NaN magnitudes compare false everywhere, so they are never counted or kept; the caller's output keeps
them visible (δ·mask keeps NaN), which is how a NaN input is detected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mergeline.methods._sparsify import sort_keys

SAMPLE = 1 << 16
SMALL = 1 << 20
GATHER_ENTRIES = 1 << 24  # magnitudes gathered in one pass, over the models (64 MB of float32)
_INF = float("inf")


def sample_indices(numel: int) -> torch.Tensor | None:
    """Flat indices of the magnitude sample of a tensor of ``numel`` entries (None: no sample needed)."""
    if numel <= SMALL:
        return None
    generator = torch.Generator().manual_seed(0)
    return torch.randint(numel, (SAMPLE,), generator=generator)


def band_from_sample(sample: torch.Tensor | None, k: int, numel: int) -> tuple[float, float]:
    """A closed band [lo, hi] of magnitudes that holds the k-th largest with high probability."""
    if sample is None or k >= numel:
        return 0.0, _INF
    ordered = torch.sort(sample.reshape(-1).float().cpu()).values
    count = ordered.numel()
    q = 1.0 - k / numel  # the answer sits at quantile q
    margin = 6.0 * math.sqrt(q * (1 - q) / count) + 2.0 / count
    lo = float(ordered[max(0, math.floor((q - margin) * (count - 1)))])
    hi = float(ordered[min(count - 1, math.ceil((q + margin) * (count - 1)))])
    if not (lo == lo and hi == hi):  # NaN in the sample: fall back to every magnitude
        return 0.0, _INF
    return lo, hi


@dataclass
class Observation:
    """What one row block tells the statistics about one model's magnitudes, for the band [lo, hi]:
    how many lie above hi, how many equal hi and lo, and the values strictly inside (flat order)."""

    above: int
    at_hi: int
    at_lo: int
    inner: torch.Tensor  # on the CPU


def _count(flat: torch.Tensor, value: float, scratch: torch.Tensor) -> tuple[int, int]:
    """(#entries > value, #entries == value), with float ops only (comparisons to bool are several times
    slower on the CPU): d = sign(x − value) is exact (x − value is 0 only when x == value), and
    Σd = #> − #<, Σ|d| = #> + #<."""
    d = torch.sub(flat, value, out=scratch).sign_()
    signed = float(d.sum(dtype=torch.float64))
    total = float(d.abs_().sum(dtype=torch.float64))
    if signed != signed or total != total:  # NaN (sign of NaN is NaN on some devices): the output shows it
        return 0, 0
    return round((total + signed) / 2), flat.numel() - round(total)


def observe(magnitudes: torch.Tensor, lo: float, hi: float, scratch: torch.Tensor | None = None) -> Observation:
    flat = magnitudes.reshape(-1)
    scratch = torch.empty_like(flat) if scratch is None else scratch.reshape(-1)
    if lo <= 0.0 and hi == _INF:  # every magnitude (NaN aside) is inside
        return Observation(0, 0, 0, flat[flat >= 0].to("cpu", copy=True))
    above, at_hi = _count(flat, hi, scratch)
    if lo == hi:  # bf16 task vectors: often one magnitude holds the whole band
        return Observation(above, at_hi, 0, flat.new_empty(0, device="cpu"))
    above_lo, at_lo = _count(flat, lo, scratch)
    inner = flat.new_empty(0, device="cpu")
    if above_lo > above + at_hi:  # something strictly inside: pull it out
        inner = flat[(flat > lo) & (flat < hi)].to("cpu", copy=True)
    return Observation(above, at_hi, at_lo, inner)


@dataclass
class Cut:
    """The trim of one (tensor, model): keep |δ| > value, plus ``keep[b]`` of block b's entries == value
    (of ``equal[b]``); ``kept`` entries in all. With ``mask`` (ties straddling the cut-off): the kept
    entries of the whole tensor, block b's at flat offsets ``starts[b]`` onwards."""

    value: float
    keep: list[int]
    equal: list[int]
    kept: int
    mask: torch.Tensor | None = None
    starts: list[int] = field(default_factory=list)


@dataclass
class TrimState:
    """Statistics of one (tensor, model) in progress."""

    k: int
    numel: int
    lo: float
    hi: float
    tries: int = 0
    result: Cut | None = field(default=None)
    gather: bool = False  # ties straddle the cut-off: a pass gathers the magnitudes for the sort
    buffer: torch.Tensor | None = None  # while this model's magnitudes are gathered: the whole tensor's
    # where mergekit's sort runs for these magnitudes, and on which values (``note_keys``)
    keys_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    keys_dtype: torch.dtype = torch.float32

    def note_keys(self, magnitudes: torch.Tensor) -> None:
        """Record the device and sort dtype of this tensor's magnitudes (before any gather)."""
        self.keys_device, self.keys_dtype = magnitudes.device, sort_keys(magnitudes[:0]).dtype


def resolve(state: TrimState, observations: list[Observation]) -> bool:
    """Fix ``state.result`` from the blocks' observations (flat order). False: observe again (new band)."""
    k = state.k
    blocks = len(observations)
    if k <= 0:
        state.result = Cut(_INF, [0] * blocks, [0] * blocks, 0)
        return True
    above = sum(o.above for o in observations)
    at_hi = sum(o.at_hi for o in observations)
    at_lo = sum(o.at_lo for o in observations) if state.lo != state.hi else 0
    inner = torch.cat([o.inner for o in observations]) if observations else torch.empty(0)
    everything = state.lo <= 0.0 and state.hi == _INF
    need = k - above  # the answer is the need-th largest of: at_hi × hi, the inner values, at_lo × lo
    if not 1 <= need <= at_hi + inner.numel() + at_lo and not everything:
        state.tries += 1
        if state.tries >= 2:
            state.lo, state.hi = 0.0, _INF
        elif need < 1:
            state.lo, state.hi = state.hi, _INF
        else:
            state.lo, state.hi = 0.0, state.lo
        return False
    if need <= at_hi:
        cut = state.hi
        equal = [o.at_hi for o in observations]
        greater = above
    elif need <= at_hi + inner.numel():
        cut = float(torch.kthvalue(inner, inner.numel() - (need - at_hi) + 1).values)
        equal = [int((o.inner == cut).sum()) for o in observations]
        greater = above + at_hi + int((inner > cut).sum())
    elif need <= at_hi + inner.numel() + at_lo:
        cut = state.lo
        equal = [o.at_lo for o in observations]
        greater = above + at_hi + inner.numel()
    else:  # every magnitude, and fewer non-NaN ones than k: keep them all (NaN shows in the output)
        cut = -_INF
        equal = [0] * blocks
        greater = inner.numel()
    ties = max(0, k - greater)
    keep = []
    for count in equal:
        take = min(ties, count)
        keep.append(take)
        ties -= take
    state.result = Cut(cut, keep, equal, greater + sum(keep))
    state.gather = 0 < sum(keep) < sum(equal)  # some of the tied entries, not all: mergekit's sort decides
    return True


def gather_into(buffer: torch.Tensor, magnitudes: torch.Tensor, rows: tuple[int, int] | None) -> int:
    """Copy a row block's magnitudes (rows [start, stop) of the tensor; None: all of it) into their place
    of the tensor's flat ``buffer`` (mergekit's sort keys); returns the block's flat start."""
    flat = magnitudes.reshape(-1)
    start = 0 if rows is None else rows[0] * (flat.numel() // max(1, rows[1] - rows[0]))
    buffer[start:start + flat.numel()].copy_(flat)
    return start


def start_gathers(states: list[TrimState | None]) -> bool:
    """Give the states waiting to be gathered, in order, the buffers the next pass fills, up to
    ``GATHER_ENTRIES`` entries in all (always the first one); True when any was given one."""
    used = 0
    for state in states:
        if state is None or not state.gather:
            continue
        if used and used + state.numel > GATHER_ENTRIES:
            break
        state.buffer = torch.empty(state.numel, dtype=state.keys_dtype, device=state.keys_device)
        used += state.numel
    return used > 0


def resolve_by_sort(state: TrimState, starts: list[int]) -> None:
    """Keep the k entries ``argsort(|δ|, descending=True)`` ranks first over the whole tensor (mergekit);
    ``starts``: each block's flat start in the gathered buffer (block order)."""
    assert state.result is not None and state.buffer is not None
    # argsort(x) is sort(x).indices, the same kernel; sorting the buffer in place (it is ours) spares
    # the copy of the values argsort would make: the order, ties included, is argsort's.
    order = torch.empty(state.numel, dtype=torch.int64, device=state.buffer.device)
    torch.sort(state.buffer, descending=True, out=(state.buffer, order))
    state.buffer = None
    mask = torch.zeros(state.numel, dtype=torch.bool, device=order.device)
    mask[order[:state.k]] = True
    del order
    state.result.mask, state.result.starts = mask, starts
    state.result.kept = state.k
    state.gather = False


def block_mask(magnitudes: torch.Tensor, cut: Cut, block: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Float 0/1 mask of the kept entries of row block ``block`` (``magnitudes`` = its |δ|).

    Without a stored mask a block keeps all or none of its entries equal to the cut-off.
    [x > t] = max(sign(x − t), 0) with float ops (exact: x − t is 0 only when x == t); [x ≥ cut] is
    [x > t] for t the value just below ``cut`` in the magnitudes' dtype.
    """
    out = torch.empty_like(magnitudes) if out is None else out
    if cut.mask is not None:
        start = cut.starts[block]
        return out.copy_(cut.mask[start:start + magnitudes.numel()].reshape(magnitudes.shape))
    threshold = cut.value
    if cut.keep[block] == cut.equal[block] > 0:  # every entry equal to the cut-off is kept here: x ≥ cut
        # the next value below in the magnitudes' own dtype (a float32 one would round back to cut in bf16)
        down = torch.tensor([cut.value, -_INF], dtype=magnitudes.dtype)
        threshold = float(torch.nextafter(down[0], down[1]))
    return torch.sub(magnitudes, threshold, out=out).sign_().clamp_min_(0)
