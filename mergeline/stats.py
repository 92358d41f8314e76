"""Uncertainty of accuracies measured on a finite test set, and paired tests between two models.

Accuracy on ``n`` test examples is a binomial proportion; two models scored on *the same* examples
are paired, so their difference is tested on the examples where they disagree, not by comparing two
intervals (which is far weaker). Pure Python (``math`` and ``random``): no numpy/scipy needed.

- :func:`wilson_interval`: Wilson score interval for ``k`` successes out of ``n`` (Wilson 1927); it
  stays inside [0, 1] and keeps close to its nominal coverage for small ``n`` and ``p`` near 0 or 1.
- :func:`mcnemar_exact`: the exact (binomial) McNemar test on the discordant pairs: with
  ``b`` = examples only model A gets right and ``c`` = only B, under H0 ``b ~ Bin(b + c, 1/2)``;
  two-sided p = min(1, 2 · P(X ≤ min(b, c))).
- :func:`paired_bootstrap`: resample example indices with replacement (the same indices for both
  models, within each stratum such as a task) and report the mean difference, its percentile
  interval and a two-sided p (twice the share of resamples on the other side of 0).

Correctness vectors are sequences of 0/1 (or bools), or strings of ``"0"``/``"1"`` (the compact form
the evaluation stores). Errors (MergelineError): empty or mismatched vectors, bad ``k``/``n``/level.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist

from mergeline.errors import MergelineError

Correct = Sequence[int] | Sequence[bool] | str


def as_bits(correct: Correct, name: str = "correct") -> list[int]:
    """``correct`` as a list of 0/1 (a ``"0110"`` string or a sequence of 0/1/bools)."""
    bits = [int(c) for c in correct]
    if not bits:
        raise MergelineError(f"{name}: no examples")
    if any(b not in (0, 1) for b in bits):
        raise MergelineError(f"{name}: entries must be 0 or 1")
    return bits


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise MergelineError(f"level: must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for the proportion ``k / n`` at confidence ``level``."""
    if n < 1 or not 0 <= k <= n:
        raise MergelineError(f"wilson_interval: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 or k = n the bound is exactly 0 or 1; the formula leaves a rounding residue there
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def discordant(a: Correct, b: Correct) -> tuple[int, int]:
    """``(only_a, only_b)``: examples only model A gets right, and only model B."""
    x, y = as_bits(a, "a"), as_bits(b, "b")
    if len(x) != len(y):
        raise MergelineError(f"paired vectors differ in length: {len(x)} vs {len(y)}")
    only_a = sum(1 for i, j in zip(x, y) if i and not j)
    only_b = sum(1 for i, j in zip(x, y) if j and not i)
    return only_a, only_b


def mcnemar_exact(a: Correct, b: Correct) -> float:
    """Two-sided exact McNemar p-value that A and B have the same accuracy on these paired examples."""
    only_a, only_b = discordant(a, b)
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


def paired_bootstrap(a: Correct, b: Correct, *, strata: Sequence[int] | None = None, iters: int = 10000,
                     level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Bootstrap of mean(A) − mean(B) over paired examples; ``strata`` resamples within groups.

    With ``strata`` (one group id per example, e.g. the task), each group is resampled to its own
    size and the statistic is the mean over groups of the per-group accuracy difference (the
    "mean accuracy over tasks" of the tables), so a large task does not outweigh a small one.
    Returns ``diff``, ``low``, ``high`` and ``p`` (two-sided).
    """
    x, y = as_bits(a, "a"), as_bits(b, "b")
    if len(x) != len(y):
        raise MergelineError(f"paired vectors differ in length: {len(x)} vs {len(y)}")
    if iters < 1:
        raise MergelineError(f"iters: must be >= 1, got {iters}")
    if strata is not None and len(strata) != len(x):
        raise MergelineError(f"strata: {len(strata)} entries for {len(x)} examples")
    groups: dict[int, list[int]] = {}
    for index, group in enumerate(strata if strata is not None else [0] * len(x)):
        groups.setdefault(int(group), []).append(index)
    delta = [i - j for i, j in zip(x, y)]

    def statistic(samples: list[list[int]]) -> float:
        return sum(sum(delta[i] for i in s) / len(s) for s in samples) / len(samples)

    observed = statistic(list(groups.values()))
    rng = random.Random(seed)
    draws = sorted(statistic([rng.choices(members, k=len(members)) for members in groups.values()])
                   for _ in range(iters))
    alpha = (1 - level) / 2
    low = draws[min(iters - 1, int(math.floor(alpha * iters)))]
    high = draws[min(iters - 1, int(math.ceil((1 - alpha) * iters)) - 1)]
    # two-sided: how often the resampled difference falls on the far side of zero
    below = sum(1 for d in draws if d <= 0) / iters
    above = sum(1 for d in draws if d >= 0) / iters
    return {"diff": observed, "low": low, "high": high, "p": min(1.0, 2 * min(below, above))}


def bootstrap_mean_interval(correct: Correct, *, strata: Sequence[int] | None = None, iters: int = 10000,
                            level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the (stratum-averaged) accuracy of one model, by the same resampling."""
    bits = as_bits(correct)
    result = paired_bootstrap(bits, [0] * len(bits), strata=strata, iters=iters, level=level, seed=seed)
    return result["low"], result["high"]
