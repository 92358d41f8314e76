"""Shared sparsifiers and the sign-consensus combine of the task-arithmetic family.

Pure tensor functions (tensor in, tensor out), used by task_arithmetic, ties, dare, breadcrumbs, sta and
talos. Semantics follow mergekit 0.1.5 (``mergekit/sparsify.py``, ``generalized_task_arithmetic.py``)
where mergekit has the method; the differences are stated per function.

Tie rule of the per-tensor magnitude trims (TIES, Breadcrumbs): exactly ``k`` entries are kept, and when
entries equal to the k-th largest magnitude straddle the cut-off, the ones kept are those mergekit keeps
on the same device: mergekit ranks by ``torch.argsort(|δ|, descending=True)`` (Breadcrumbs: an ascending
``torch.sort``), unstable, on float32 magnitudes on the CPU and on the magnitudes in their own dtype on
the GPU (``--cuda``). An unstable sort's order among equal keys depends on the whole tensor and on the
device (on AVX-512 CPUs torch uses a vectorised quicksort, on CUDA a radix sort), so that case runs the
same sort on the same values on the same device (:func:`sort_keys`). A CPU merge and a CUDA merge may
then keep different entries among equal magnitudes, as mergekit's do; each reproduces bit for bit on
its own kind of device (the lineage records it). Without straddling ties the fast selection (no sort)
gives the same set everywhere. Methods of this project's own keep the lowest flat index first
(``ties="index"``).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Literal, Sequence

import torch

RescaleMode = Literal["l1", "inverse_density"]

_RESCALE_EPS = 1e-7  # mergekit's tolerance: below it, the masked tensor is left unscaled


def keep_count(density: float, numel: int) -> int:
    """k = max(1, int(density·n)) for density < 1 (a positive density keeps at least one entry), else n."""
    if density >= 1.0 or numel == 0:
        return numel
    return max(1, int(density * numel))


_SMALL = 1 << 20  # below this many entries a plain k-th-value selection is cheap enough
_SAMPLE = 1 << 16


def kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th largest value of a 1-D tensor (1 ≤ k ≤ n), without sorting it.

    ``torch.kthvalue`` on a whole large tensor is single-threaded. Instead a fixed-seed sample
    brackets the answer in a band [lo, hi]; two multi-threaded comparison passes count the entries
    above hi and pull out the band, and the selection runs on the band only. The result is exact:
    when the bracket misses (unlikely), it falls back to the full selection.
    """
    n = flat.numel()
    if flat.is_cuda:
        return torch.topk(flat, k, sorted=False).values.min()  # kthvalue is far slower on CUDA
    if n <= _SMALL:
        return torch.kthvalue(flat, n - k + 1).values
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(n, (_SAMPLE,), generator=gen).to(flat.device)
    sample = flat[index].float()
    q = 1.0 - k / n  # the answer sits at quantile q
    margin = 6.0 * (q * (1 - q) / _SAMPLE) ** 0.5 + 2.0 / _SAMPLE
    lo, hi = torch.quantile(sample, torch.tensor([max(0.0, q - margin), min(1.0, q + margin)],
                                                 device=sample.device)).to(flat.dtype)
    above = int((flat > hi).sum())
    # Closed band: with bf16 deltas lo == hi is common, and (lo, hi] would then be empty.
    band = flat[(flat >= lo) & (flat <= hi)]
    need = k - above  # the answer is the need-th largest inside the band
    if 1 <= need <= band.numel():
        return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(flat, n - k + 1).values


TieRule = Literal["index", "argsort", "topk"]


def sort_keys(magnitudes: torch.Tensor) -> torch.Tensor:
    """The values mergekit's magnitude sort orders on this device: float32 on the CPU, the magnitudes'
    own dtype on CUDA (``mergekit/sparsify.py`` upcasts on the CPU only)."""
    return magnitudes.float() if magnitudes.device.type == "cpu" else magnitudes


def _mergekit_pick(flat: torch.Tensor, k: int, ties: TieRule) -> torch.Tensor:
    """The ``k`` entries mergekit's selection returns on ``flat``'s device (boolean mask there), by the
    same torch call on the same values: ``argsort(descending)[:k]`` of :func:`sort_keys` (``magnitude``),
    or ``topk`` (``sce``)."""
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if ties == "topk":
        mask[torch.topk(flat, k, largest=True).indices] = True
    else:
        mask[torch.argsort(sort_keys(flat), descending=True)[:k]] = True
    return mask


def topk_mask(scores: torch.Tensor, k: int, ties: TieRule = "index") -> torch.Tensor:
    """Boolean mask of exactly ``k`` largest ``scores``.

    One exact k-th-value selection (:func:`kth_largest`) instead of a sort, so the cost is a few
    elementwise passes and memory stays O(n) booleans. Entries equal to the k-th largest that straddle
    the cut-off: ``index`` keeps the lowest flat indices; ``argsort`` / ``topk`` keep mergekit's (module
    docstring), found by its sort, which then runs only on such tensors.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if flat.is_cuda and ties != "index":
        # mergekit's own call on the GPU: one radix sort there costs less than a selection, a count
        # synchronised with the host, and then the sort anyway (bf16 magnitudes tie at most cut-offs).
        return _mergekit_pick(flat, k, ties).reshape(scores.shape)
    cut = kth_largest(flat, k)
    above = flat > cut
    at_cut = flat == cut
    if flat.is_cuda and ties == "index":
        # No round trip to the host: the tie budget stays on the device, where the cumsum is cheap.
        at_cut &= torch.cumsum(at_cut, dim=0) <= k - above.sum()
        return (above | at_cut).reshape(scores.shape)
    need = k - int(above.sum())
    if int(at_cut.sum()) > need:
        if ties != "index":
            return _mergekit_pick(flat, k, ties).reshape(scores.shape)
        # Ties at the cut-off: the first `need` of them in flat order (cumsum only on this rare path).
        at_cut &= torch.cumsum(at_cut, dim=0) <= need
    return (above | at_cut).reshape(scores.shape)


def magnitude_mask(delta: torch.Tensor, density: float, ties: TieRule = "index") -> torch.Tensor:
    """TIES trim: keep the k = max(1, int(density·n)) largest |δ| of one tensor."""
    return topk_mask(delta.abs(), keep_count(density, delta.numel()), ties)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the top ``int(γ·n)`` magnitudes and keep the next ``int(density·n)``.

    When ``int(γ·n) + int(density·n) > n`` fewer outliers are dropped so that ``int(density·n)`` entries
    remain (as mergekit). ``int(γ·n) = 0`` simply drops no outliers: the whole tensor is never zeroed.
    Ties straddling either cut-off are resolved as mergekit's ascending ``torch.sort`` does on this device.
    """
    n = delta.numel()
    target = int(density * n)
    n_top = min(int(gamma * n), n - target)
    magnitudes = delta.abs()
    keep_upto = topk_mask(magnitudes, n_top + target)  # the n_top + target largest
    drop_top = topk_mask(magnitudes, n_top)  # the n_top largest (same tie order, so a subset)
    if _straddles(magnitudes, n_top + target) or _straddles(magnitudes, n_top):
        order = torch.sort(sort_keys(magnitudes.reshape(-1)), descending=False).indices  # as mergekit here
        keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
        keep[order[n - n_top - target:n - n_top]] = True
        return keep.reshape(delta.shape)
    return keep_upto & ~drop_top


def _straddles(magnitudes: torch.Tensor, k: int) -> bool:
    """Whether entries equal to the k-th largest magnitude lie on both sides of the cut-off."""
    flat = magnitudes.reshape(-1)
    if k <= 0 or k >= flat.numel():
        return False
    cut = kth_largest(flat, k)
    return int((flat >= cut).sum()) > k


def tensor_seed(seed: int, name: str, model_index: int) -> int:
    """A 63-bit seed from (global seed, tensor name, configured model index): stable across runs,
    devices and tensor order, so a merge reproduces bit for bit."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{model_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def bernoulli_mask(shape: torch.Size, density: float, seed: int, device: torch.device) -> torch.Tensor:
    """DARE: each entry kept independently with probability ``density`` (= 1 − p).

    Drawn on ``device`` from a generator of that device seeded with ``seed`` (mergekit ``--cuda`` draws on
    the GPU too): the same mask on every run on the same kind of device; a CPU and a CUDA generator
    draw different streams.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=generator, device=device) < density


def apply_mask(
    delta: torch.Tensor,
    mask: torch.Tensor,
    rescale: RescaleMode | None = None,
    density: float = 1.0,
    into_mask: bool = False,
) -> torch.Tensor:
    """δ ⊙ m, optionally rescaled.

    ``l1`` (mergekit): multiply by ‖δ‖₁ / ‖δ⊙m‖₁ (skipped when either norm is below 1e-7).
    ``inverse_density`` (DARE paper): multiply by 1 / density.
    ``into_mask``: the result overwrites ``mask`` (a 0/1 tensor in δ's dtype), one tensor fewer.
    """
    masked = mask.mul_(delta) if into_mask else delta * mask.to(delta.dtype)
    if rescale == "l1":
        before = delta.abs().sum()
        after = masked.abs().sum()
        if before < _RESCALE_EPS or after < _RESCALE_EPS:
            return masked
        return masked.mul_(before / after) if into_mask else masked * (before / after)
    if rescale == "inverse_density":
        return masked.div_(density) if into_mask else masked / density
    return masked


def combine(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    consensus: Literal["sum", "count"] | None,
    normalize: bool,
    lam: float,
    masks: Sequence[torch.Tensor | None] | None = None,
    scratch: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """The merge step of mergekit's task-arithmetic family (METHODS §7.1 steps 3-5).

    u_i = w_i δ_i (times the trim mask m_i when ``masks`` gives one: δ_i ⊙ m_i as mergekit's sparsifier).
    With consensus: s = +1 where Σ_i u_i ≥ 0 ("sum"; "count" uses Σ_i sign(u_i)) else −1,
    a_i = [sign(u_i) = s] (zeros never agree), Δ = Σ_i a_i u_i, D = Σ_i a_i w_i (0 → 1).
    Without: Δ = Σ_i u_i, D = Σ_i w_i (|D| < 1e-8 → 1).  If normalize: Δ ← Δ / D.  Returns λ·Δ.

    ``scratch(key, like, dtype=None)`` supplies reusable buffers (default: fresh ones); the inputs are
    left untouched. Masks multiply (NaN·0 stays NaN), so a NaN/Inf input always reaches the output.
    """
    # Model by model through scratch buffers: memory is a few tensors, not T stacked copies. Additions
    # run in model order, as a sum over a stacked first dimension would, and u_i = w_i·δ_i is rounded
    # exactly as there.
    buf = scratch or (lambda key, like, dtype=None: torch.empty_like(like, dtype=dtype))
    first = deltas[0]
    # mergekit holds the weights in a tensor of the compute dtype: in bfloat16 a weight of 0.7 is
    # 0.69921875 there (in float32 the same rounding happens anyway when a tensor is multiplied by it)
    weights = [float(torch.tensor(w, dtype=first.dtype)) for w in weights]

    def scaled(i: int, key: object) -> torch.Tensor:
        u = torch.mul(deltas[i], weights[i], out=buf(key, first))
        if masks is not None and masks[i] is not None:
            u.mul_(masks[i])
        return u

    if consensus is None:
        mixed = scaled(0, "mixed")
        for i in range(1, len(deltas)):
            mixed.add_(scaled(i, "u"))
        divisor: torch.Tensor | float = float(sum(weights))
        if abs(divisor) < 1e-8:
            divisor = 1.0
    else:
        us = [scaled(i, ("u", i)) for i in range(len(deltas))]
        votes = buf("votes", first)
        for i, u in enumerate(us):
            term = u if consensus == "sum" else torch.sign(u, out=buf("sign", first))
            votes.copy_(term) if i == 0 else votes.add_(term)
        # elected sign s = +1 where the vote is ≥ 0 (a zero vote counts as +), else −1: sign(sign(v) + ½).
        # Float ops throughout: comparisons to bool and bool masks are several times slower on the CPU.
        elected = torch.sign(votes, out=buf("elected", first)).add_(0.5).sign_()
        agree = buf("agree", first)
        mixed = buf("mixed", first).zero_()
        divisor = buf("divisor", first).zero_() if normalize else 1.0
        for u, w in zip(us, weights):
            # a_i = [sign(u_i) = s] = max(sign(u_i)·s, 0): zeros never agree
            torch.sign(u, out=agree).mul_(elected).clamp_min_(0)
            mixed.add_(u.mul_(agree))
            if normalize:
                divisor.add_(agree, alpha=w)  # w·a is exact (a ∈ {0, 1}), so fused or not it rounds once
        if normalize:
            divisor.masked_fill_(divisor == 0, 1)
    if normalize:
        mixed.div_(divisor)
    if lam != 1:
        mixed.mul_(lam)
    return mixed
