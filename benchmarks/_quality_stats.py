"""Table cells with uncertainty for the quality benchmarks (``mergeline.stats`` underneath).

- an accuracy on one test set: ``0.912 [0.889, 0.931]`` (Wilson 95%);
- a mean accuracy over tasks: the mean of the per-task accuracies, with a 95% interval from a
  bootstrap that resamples each task's examples within that task;
- a comparison with a reference model on the *same* examples (TA in the tables): the difference
  of mean accuracy with its paired, task-stratified bootstrap interval, and the exact McNemar p on
  all the pooled examples; ``*`` marks p < 0.05.

Correctness comes as ``{task: "0110..."}`` (``_quality_records.correctness``); a missing or
empty vector gives ``–`` (results recorded before per-example scores were kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mergeline.stats import bootstrap_mean_interval, mcnemar_exact, paired_bootstrap, wilson_interval

ALPHA = 0.05
ITERS = 4000


def _present(correct: Mapping[str, str] | None, tasks: Sequence[str]) -> bool:
    return bool(correct) and all(correct.get(t) for t in tasks)


def acc_cell(bits: str | None) -> str:
    """``acc [low, high]`` (Wilson 95%) of one correctness vector."""
    if not bits:
        return "–"
    k, n = bits.count("1"), len(bits)
    low, high = wilson_interval(k, n)
    return f"{k / n:.3f} [{low:.3f}, {high:.3f}]"


def _stack(correct: Mapping[str, str], tasks: Sequence[str]) -> tuple[str, list[int]]:
    bits = "".join(correct[t] for t in tasks)
    strata = [i for i, t in enumerate(tasks) for _ in correct[t]]
    return bits, strata


def mean_cell(correct: Mapping[str, str] | None, tasks: Sequence[str]) -> str:
    """Mean accuracy over ``tasks`` with its task-stratified bootstrap 95% interval."""
    if not _present(correct, tasks):
        return "–"
    bits, strata = _stack(correct, tasks)
    mean = sum(correct[t].count("1") / len(correct[t]) for t in tasks) / len(tasks)
    low, high = bootstrap_mean_interval(bits, strata=strata, iters=ITERS)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def compare(correct: Mapping[str, str] | None, reference: Mapping[str, str] | None, tasks: Sequence[str]
            ) -> dict[str, float] | None:
    """``diff``/``low``/``high`` (paired bootstrap of the mean over tasks) and ``p`` (exact McNemar, pooled)."""
    if not _present(correct, tasks) or not _present(reference, tasks):
        return None
    if any(len(correct[t]) != len(reference[t]) for t in tasks):
        return None
    a, strata = _stack(correct, tasks)
    b, _ = _stack(reference, tasks)
    boot = paired_bootstrap(a, b, strata=strata, iters=ITERS)
    return {"diff": boot["diff"], "low": boot["low"], "high": boot["high"], "p": mcnemar_exact(a, b),
            "p_bootstrap": boot["p"]}


def compare_cell(result: dict[str, float] | None, is_reference: bool = False) -> str:
    if is_reference:
        return "(reference)"
    if result is None:
        return "–"
    mark = "*" if result["p"] < ALPHA else ""
    return f"{result['diff']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}], p={result['p']:.3g}{mark}"


def verdict(result: dict[str, float] | None) -> str:
    """Plain words for a comparison with the reference (TA)."""
    if result is None:
        return "not testable (no per-example scores)"
    if result["p"] >= ALPHA:
        return f"no significant difference (Δ {result['diff']:+.3f}, McNemar p = {result['p']:.3g})"
    side = "better" if result["diff"] > 0 else "worse"
    return f"significantly {side} (Δ {result['diff']:+.3f}, McNemar p = {result['p']:.3g})"
