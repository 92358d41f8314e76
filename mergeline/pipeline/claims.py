"""Paired comparisons over a group of pipeline runs (seeds): each method against a reference method
on addition, each negation against the base, the task analogy against its source task's vector alone
and against the base, with an interval, a paired test and a verdict.

Every comparison pools the runs' test examples: per run and task, the per-example correctness of
the two models (``eval/metrics.json``'s ``correct``), so both are scored on the same examples. The
difference A − B is the mean over (run, task) strata of the accuracy difference, with a paired
bootstrap interval resampled within strata, and the exact McNemar p on the pooled examples
(:mod:`mergeline.stats`). Verdict on the claim "A − B has the claimed sign": *holds here* when the
interval lies on the claimed side of 0 beyond ``margin``, *does not hold here* when it lies on the
other side or inside ±``margin`` (no effect of the size claimed), otherwise *undecided*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mergeline.stats import mcnemar_exact, paired_bootstrap

MARGIN = 0.01


@dataclass(frozen=True)
class Pairs:
    """Two models' correctness on the same examples, pooled over strata (one id per example)."""

    a: str
    b: str
    strata: tuple[int, ...]

    def add(self, a: str, b: str, stratum: int) -> Pairs:
        if len(a) != len(b):
            raise ValueError(f"paired vectors differ in length: {len(a)} vs {len(b)}")
        return Pairs(self.a + a, self.b + b, self.strata + (stratum,) * len(a))


@dataclass(frozen=True)
class Comparison:
    claim: str
    n: int
    runs: int
    diff: float
    low: float
    high: float
    p: float
    verdict: str


def verdict(low: float, high: float, sign: int, margin: float = MARGIN) -> str:
    """``sign`` +1: the claim is A > B; −1: A < B."""
    lo, hi = sorted((sign * low, sign * high))
    if lo > margin:
        return "holds here"
    if hi < 0 or (-margin <= lo and hi <= margin):
        return "does not hold here"
    return "undecided"


def compare(claim: str, pairs: Pairs, runs: int, sign: int, iters: int = 2000) -> Comparison:
    boot = paired_bootstrap(pairs.a, pairs.b, strata=list(pairs.strata), iters=iters)
    return Comparison(claim, len(pairs.a), runs, boot["diff"], boot["low"], boot["high"],
                      mcnemar_exact(pairs.a, pairs.b), verdict(boot["low"], boot["high"], sign))


def addition_comparisons(runs: Sequence[tuple[dict[str, str], dict[str, dict[str, str]]]], tasks: Sequence[str],
                         reference: str = "task_arithmetic") -> list[Comparison]:
    """Each method's chosen variant − the reference method's, claim "beats it"; ``runs`` holds per run
    (method -> its chosen variant, variant -> {task: correctness})."""
    methods = sorted({m for chosen, _ in runs for m in chosen} - {reference})
    out = []
    for method in methods:
        pairs, used = Pairs("", "", ()), 0
        for index, (chosen, correct) in enumerate(runs):
            if method not in chosen or reference not in chosen:
                continue
            a, b = correct.get(chosen[method], {}), correct.get(chosen[reference], {})
            if not all(a.get(t) and b.get(t) for t in tasks):
                continue
            used += 1
            for k, task in enumerate(tasks):
                pairs = pairs.add(a[task], b[task], index * len(tasks) + k)
        if used:
            out.append(compare(f"{method} beats {reference} (addition)", pairs, used, +1))
    return out


def negation_comparisons(runs: Sequence[tuple[dict[tuple[str, str], dict[str, str]], dict[str, str]]]
                         ) -> list[Comparison]:
    """Each negation (task, method) − the base on its target task, claim "forgets" (lower accuracy);
    ``runs`` holds per run ((task, method) -> the chosen point's correctness, the base's correctness)."""
    keys = sorted({key for chosen, _ in runs for key in chosen})
    out = []
    for task, method in keys:
        pairs, used = Pairs("", "", ()), 0
        for index, (chosen, base) in enumerate(runs):
            negated = chosen.get((task, method), {}).get(task)
            if negated and base.get(task):
                pairs, used = pairs.add(negated, base[task], index), used + 1
        if used:
            out.append(compare(f"{method} negation forgets {task}", pairs, used, -1))
    return out


def analogy_comparisons(runs: Sequence[tuple[dict[str, tuple[str, str]], dict[str, str]]]) -> list[Comparison]:
    """The analogy θ0 + λ(τ_C + μτ_B − μτ_A) against C's vector alone (``transfer``) and against the base,
    both on task D, claim "beats it"; ``runs`` holds per run (setting -> (task D, the chosen point's
    correctness on D), the base's correctness per task)."""
    out = []
    for other in ("transfer", "base"):
        pairs, used = Pairs("", "", ()), 0
        for index, (settings, base) in enumerate(runs):
            if "analogy" not in settings:
                continue
            task, analogy = settings["analogy"]
            reference = base.get(task, "") if other == "base" else settings.get(other, ("", ""))[1]
            if analogy and reference:
                pairs, used = pairs.add(analogy, reference, index), used + 1
        if used:
            out.append(compare(f"analogy beats {'τ_C alone' if other == 'transfer' else 'the base'} on D",
                               pairs, used, +1))
    return out


__all__ = ["Comparison", "MARGIN", "Pairs", "addition_comparisons", "analogy_comparisons", "compare",
           "negation_comparisons", "verdict"]
