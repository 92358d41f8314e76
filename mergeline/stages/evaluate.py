"""Stage ``evaluate``: lm-eval on every task and the control set, and the numbers derived from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergeline.params import vector_mode
from mergeline.pipeline.edits import choose_edits, edit_sets, with_test
from mergeline.pipeline.records import (
    BaseRecord, Checkpoint, DataRecord, Evaluation, Fit, Merged, Scores, Selection, Variant, encode,
)
from mergeline.stages.common import StageContext, timed, write_json
from mergeline.stages.merge import ensure_merged

SPLITS = ("validation", "test")
DETAILS = "details.json"


@dataclass(frozen=True)
class Scoring:
    """One evaluation the plan asks for: ``model`` on ``split`` of ``sets``, reported as ``name``."""

    name: str
    model: BaseRecord | Checkpoint | Merged
    split: str
    sets: tuple[str, ...]


# Scores a batch of independent evaluations (all at once where the executor can), in order.
ScoreFn = Callable[[Sequence[Scoring]], list[Evaluation]]


def evaluation_sets(ctx: StageContext, role: str, split: str, task: str | None = None) -> tuple[str, ...]:
    """The sets a model is scored on: ``role`` is ``base``, ``single`` (fine-tuned on ``task``) or ``variant``.

    The base always gets every task and the control (drift is measured against it). A single-task
    model needs only its own task for normalized accuracy (``evaluate.singles: own``); a merged
    variant skips the control on validation when ``evaluate.validation_control`` is off, because
    selection reads only the task accuracies.
    """
    p = ctx.params
    if role == "single" and p.evaluate.singles == "own":
        if task is None:
            raise ValueError("evaluation_sets: a single-task model needs its task")
        return (task,)
    if role == "variant" and split == "validation" and not p.evaluate.validation_control:
        return tuple(p.task_names)
    return (*p.task_names, p.control)


def evaluate(ctx: StageContext, name: str, model: BaseRecord | Checkpoint | Merged, split: str, data: DataRecord,
             sets: tuple[str, ...]) -> Evaluation:
    """Accuracy of one model on ``split`` of ``sets`` (task and control sets); a merged variant whose folder
    was pruned after an earlier scoring is rebuilt first (its record holds the config)."""
    from mergeline.evaluate import evaluate_model, load_causal_lm

    if isinstance(model, Merged):
        ensure_merged(ctx, model)
    files = {t: ctx.root / data.split(t, split).path for t in sets}
    ctx.used({"model": name, "split": split, "sets": ",".join(sets), "batch_size": ctx.params.evaluate.batch_size,
              "max_length": ctx.params.evaluate.max_length})
    ctx.say(f"evaluate[{split}]: {name}")
    with timed() as clock:
        loaded, tokenizer = load_causal_lm(ctx.root / model.path, ctx.device)
        metrics = evaluate_model(loaded, tokenizer, files, batch_size=ctx.params.evaluate.batch_size,
                                 device=ctx.device, max_length=ctx.params.evaluate.max_length,
                                 metrics={t: data.kinds[t].metric for t in sets if t in data.kinds})
        del loaded
    for task, scored in metrics.items():
        ctx.metric(f"{split}/acc/{task}", scored["acc"])
    return Evaluation(name=name, split=split, metrics={t: m["acc"] for t, m in metrics.items()}, raw=metrics,
                      seconds=clock.seconds)


def summarize(ctx: StageContext, evaluation: Evaluation, base: Evaluation,
              singles: dict[str, Evaluation] | None) -> dict[str, float]:
    """Per-task accuracy, normalized accuracy (÷ the single-task model of the same mode), control drift
    (when the evaluation has the control set)."""
    p = ctx.params
    acc = evaluation.metrics
    row: dict[str, float] = {}
    norm = []
    for task in p.task_names:
        row[f"acc/{task}"] = acc[task]
        if singles is not None:
            reference = singles[task].metrics[task]
            row[f"norm_acc/{task}"] = acc[task] / reference if reference > 0 else 0.0
            norm.append(row[f"norm_acc/{task}"])
    row["acc/mean"] = sum(acc[t] for t in p.task_names) / len(p.task_names)
    if norm:
        row["norm_acc/mean"] = sum(norm) / len(norm)
    if p.control in acc:  # validation may skip it (evaluate.validation_control)
        row["acc/control"] = acc[p.control]
        row["control_drift"] = acc[p.control] - base.metrics[p.control]
    return row


def write_metrics(ctx: StageContext, scores: Scores) -> Path:
    """``work_dir/eval/metrics.json`` (the evaluate stage's DVC metrics file): champion, test and validation
    rows; beside it :func:`write_details`."""
    path = ctx.work / "eval" / "metrics.json"
    write_json(path, {"champion": scores.selection.champion, "test": scores.test_rows,
                      "validation": scores.validation_rows})
    write_details(ctx, scores)
    return path


def write_details(ctx: StageContext, scores: Scores) -> Path:
    """``work_dir/eval/details.json``: the base's accuracies, each edit's sweep, choice and test scores, and
    the per-example correctness on test of the base and each chosen variant (for paired tests). Not a
    metrics file: DVC would show every 0/1 string as a metric."""
    path = ctx.work / "eval" / DETAILS
    base = scores.reference["base"]
    write_json(path, {"base": {split: base[split].metrics for split in SPLITS if split in base},
                      "edits": encode(scores.edits),
                      "correct": {"base": base["test"].correct, **scores.test_correct}})
    return path


def registered_variants(ctx: StageContext, scores: Scores) -> list[str]:
    """The variants the register stage registers: the champion and ``registry.candidates`` runners-up."""
    return list(scores.selection.ranking[: 1 + ctx.params.registry.candidates])


def select_best(rows: dict[str, dict[str, float]], variants: dict[str, Variant],
                by: str = "norm_acc/mean") -> Selection:
    """Best variant per method on the validation score ``by``, then the overall ranking.

    Ties go to the smaller |λ| (the smaller edit), then to the name, so the choice is deterministic.
    """
    def key(name: str) -> tuple[float, float, str]:
        return (-rows[name][by], abs(variants[name].lam), name)

    best: dict[str, str] = {}
    for name in rows:
        method = variants[name].method
        if method not in best or key(name) < key(best[method]):
            best[method] = name
    return Selection(best_per_method=best, ranking=tuple(sorted(best.values(), key=key)), by=by)


def single_label(fit: Fit) -> str:
    """The result name of a single-task model: ``single-<task>-<mode>``."""
    return f"single-{fit.label}"


def evaluate_experiment(ctx: StageContext, base: BaseRecord, checkpoints: dict[Fit, Checkpoint],
                        merged: dict[str, Merged], score: ScoreFn) -> Scores:
    """The evaluation plan of one experiment, in two rounds of independent evaluations (``score``).

    First the base on both splits; each single-task model on test, and on validation too when
    selection uses normalized accuracy; every merged variant on validation (an edit on its target
    task and the control set only). Then, once validation has chosen each method's best variant and
    each edit's point (:mod:`mergeline.pipeline.edits`), those on test. A given model stands for its
    task in every mode: it is scored once.
    """
    p = ctx.params
    by = p.evaluate.select_by
    single_splits = SPLITS if by.startswith("norm_acc") else ("test",)
    first = [Scoring("base", base, s, evaluation_sets(ctx, "base", s)) for s in SPLITS]
    same_as: dict[str, str] = {}
    owner: dict[str, str] = {}  # checkpoint path -> the label it is scored under
    for fit, ck in checkpoints.items():
        label = single_label(fit)
        if ck.path in owner:
            same_as[label] = owner[ck.path]
            continue
        owner[ck.path] = label
        first += [Scoring(label, ck, s, evaluation_sets(ctx, "single", s, ck.task)) for s in single_splits]
    edits = {name: rec for name, rec in merged.items() if rec.variant.edit != "addition"}
    merged = {name: rec for name, rec in merged.items() if name not in edits}
    first += [Scoring(name, rec, "validation", evaluation_sets(ctx, "variant", "validation"))
              for name, rec in merged.items()]
    first += [Scoring(name, rec, "validation", edit_sets(rec.variant, p.control)) for name, rec in edits.items()]
    reference: dict[str, dict[str, Evaluation]] = {}
    validation: dict[str, Evaluation] = {}
    for request, result in zip(first, score(first)):
        if isinstance(request.model, Merged):
            validation[request.name] = result
        else:
            reference.setdefault(request.name, {})[request.split] = result
    reference.update({label: reference[other] for label, other in same_as.items()})
    variants = {name: rec.variant for name, rec in merged.items()}
    choices = choose_edits({name: rec.variant for name, rec in edits.items()},
                           {name: validation.pop(name) for name in edits}, reference["base"]["validation"],
                           p.control, p.negation.control_ratio)

    def rows_for(evals: dict[str, Evaluation], split: str) -> dict[str, dict[str, float]]:
        rows = {}
        for name, evaluation in evals.items():
            mode = vector_mode(variants[name].method)
            singles = ({t: reference[single_label(Fit(t, mode))][split] for t in p.task_names}
                       if split in single_splits else None)
            rows[name] = summarize(ctx, evaluation, reference["base"][split], singles)
        return rows

    validation_rows = rows_for(validation, "validation")
    selection = select_best(validation_rows, variants, by)
    second = [Scoring(name, merged[name], "test", evaluation_sets(ctx, "variant", "test"))
              for name in selection.ranking]
    second += [Scoring(c.variant, edits[c.variant], "test", edit_sets(edits[c.variant].variant, p.control))
               for c in choices]
    scored = score(second)
    test = {request.name: result for request, result in zip(second, scored[: len(selection.ranking)])}
    edited = tuple(with_test(c, result, p.control) for c, result in zip(choices, scored[len(selection.ranking):]))
    return Scores(reference=reference, validation_rows=validation_rows, test_rows=rows_for(test, "test"),
                  test_correct={name: evaluation.correct for name, evaluation in test.items()}, selection=selection,
                  edits=edited)
