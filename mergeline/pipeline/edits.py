"""Edits beside addition: task negation and task analogy as merge variants, and the rules that pick
the point of each sweep that is scored on test (METHODS.md §1; Ilharco et al., arXiv 2212.04089).

- **Negation** of task t with method m: θ = θ0 − λ·v_t, the method's merge of t's vector alone with
  a per-model weight of −1, over the method's grid. Each point is scored on validation on t and the
  control set only. :func:`pick_negation` is the task-arithmetic paper's rule: the lowest target
  accuracy among the points whose control accuracy is ≥ ratio × the base model's; ties to the
  smaller |λ|. When no point qualifies the smallest |λ| is kept and the choice says the rule is unmet.
- **Analogy** A:B::C:D, task arithmetic with per-model weights: ``transfer`` θ0 + λτ_C, ``analogy``
  θ0 + λ(τ_C + μτ_B − μτ_A), ``oracle`` θ0 + λτ_D. Each setting is scored on D (and the control
  set); :func:`pick_best` takes the best validation accuracy on D, ties to the smaller |λ| (μ).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import replace

from mergeline.methods import pipeline_method
from mergeline.params import ExperimentParams
from mergeline.pipeline.records import EditChoice, EditPoint, Evaluation, Variant
from mergeline.pipeline.sweeps import MethodSweep

ANALOGY_METHOD = "task_arithmetic"


def variant_name(method: str, lam: float, density: float | None, grid: dict[str, float] | None = None) -> str:
    """``<short>_l<λ>[_d<density>][_<tag><value>...]``; a grid parameter's tag is its words' initials."""
    name = f"{pipeline_method(method)[1].short}_l{lam:g}" + (f"_d{density:g}" if density is not None else "")
    for key, value in (grid or {}).items():
        name += "_" + "".join(word[0] for word in key.split("_")) + f"{value:g}"
    return name


def sweep_variants(params: ExperimentParams, method: str, sweep: MethodSweep | None = None) -> list[Variant]:
    """One variant per point of ``method``'s grid (``merge.methods``, or ``sweep``): λ, density, grid values."""
    points = params.sweep_grid(method, sweep)  # without ``sweep``, ``merge.lambda`` pins λ
    sweep = sweep or params.merge.methods[method]
    keys = list(sweep.grid)
    variants = []
    for lam, density, *values in itertools.product(*points):
        grid = dict(zip(keys, values))
        variants.append(Variant(name=variant_name(method, lam, density, grid), method=method, lam=lam,
                                density=density, options={**sweep.options, **grid}))
    return variants


def negation_variants(params: ExperimentParams) -> Iterator[Variant]:
    """``neg-<task>-<variant name>`` for every negated task, method and point of its grid."""
    for task in params.negation.tasks:
        for method, sweep in params.negation_methods.items():
            for variant in sweep_variants(params, method, sweep):
                yield replace(variant, name=f"neg-{task}-{variant.name}", edit="negation", weights={task: -1.0},
                              target=task)


def analogy_variants(params: ExperimentParams) -> Iterator[Variant]:
    """Every λ (× μ) of the analogy's three settings, all scored on task D."""
    a = params.analogy
    if a is None:
        return
    short = pipeline_method(ANALOGY_METHOD)[1].short
    for lam in a.lambdas:
        yield Variant(name=f"transfer-{short}_l{lam:g}", method=ANALOGY_METHOD, lam=lam, density=None,
                      edit="transfer", weights={a.c: 1.0}, target=a.d)
    for lam, mu in itertools.product(a.lambdas, a.mus):
        yield Variant(name=f"analogy-{short}_l{lam:g}_mu{mu:g}", method=ANALOGY_METHOD, lam=lam, density=None,
                      edit="analogy", weights={a.c: 1.0, a.b: mu, a.a: -mu}, target=a.d)
    for lam in a.lambdas:
        yield Variant(name=f"oracle-{short}_l{lam:g}", method=ANALOGY_METHOD, lam=lam, density=None,
                      edit="oracle", weights={a.d: 1.0}, target=a.d)


def edit_variants(params: ExperimentParams) -> list[Variant]:
    return [*negation_variants(params), *analogy_variants(params)]


def edit_sets(variant: Variant, control: str) -> tuple[str, ...]:
    """The sets an edit is scored on: its target task and the control set."""
    assert variant.target is not None
    return (variant.target, control)


def pick_negation(points: list[EditPoint], control_floor: float) -> tuple[EditPoint, bool]:
    """(chosen point, whether the control rule was met): the lowest target accuracy among points whose
    control accuracy is ≥ ``control_floor``, ties to the smaller |λ| then the name; with none, the
    smallest |λ|."""
    qualifying = [p for p in points if p.control is not None and p.control >= control_floor]
    if not qualifying:
        return min(points, key=lambda p: (abs(p.lam), p.variant)), False
    return min(qualifying, key=lambda p: (p.target, abs(p.lam), p.variant)), True


def pick_best(points: list[EditPoint]) -> EditPoint:
    """The highest target accuracy, ties to the smaller |λ|, then the smaller |μ|, then the name."""
    return min(points, key=lambda p: (-p.target, abs(p.lam), abs(p.mu or 0.0), p.variant))


def _point(variant: Variant, evaluation: Evaluation, control: str) -> EditPoint:
    assert variant.target is not None
    mu = list(variant.weights.values())[1] if variant.edit == "analogy" else None  # weights: C 1, B μ, A −μ
    return EditPoint(variant=variant.name, lam=variant.lam, density=variant.density,
                     target=evaluation.metrics[variant.target], control=evaluation.metrics.get(control), mu=mu)


def choose_edits(variants: Mapping[str, Variant], validation: Mapping[str, Evaluation], base: Evaluation,
                 control: str, control_ratio: float) -> list[EditChoice]:
    """Each edit group's choice on validation (test scores still empty): one per negated task × method,
    one per analogy setting. ``base`` is the base model on validation (the control rule's reference)."""
    groups: dict[tuple[str, str, str], list[EditPoint]] = {}
    for name, evaluation in validation.items():
        v = variants[name]
        assert v.target is not None
        groups.setdefault((v.edit, v.target, v.method), []).append(_point(v, evaluation, control))
    choices = []
    for (edit, task, method), points in groups.items():
        if edit == "negation":
            chosen, met = pick_negation(points, control_ratio * base.metrics[control])
        else:
            chosen, met = pick_best(points), True
        choices.append(EditChoice(edit=edit, task=task, method=method, variant=chosen.variant, rule_met=met,
                                  points=tuple(points), test={}))
    return choices


def with_test(choice: EditChoice, evaluation: Evaluation, control: str) -> EditChoice:
    """``choice`` with its chosen point's test accuracies and per-example correctness."""
    test = {"target": evaluation.metrics[choice.task]}
    if control in evaluation.metrics:
        test["control"] = evaluation.metrics[control]
    return replace(choice, test=test, correct=evaluation.correct)


__all__ = ["ANALOGY_METHOD", "analogy_variants", "choose_edits", "edit_sets", "edit_variants", "negation_variants",
           "pick_best", "pick_negation", "variant_name", "with_test"]
