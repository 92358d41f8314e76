"""Stage ``evaluate``: lm-eval on every task and the control set, and the numbers derived from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergeline.params import vector_mode
from mergeline.stages.common import StageContext, timed, write_json

SPLITS = ("validation", "test")
# (result name, model record with "path", split, sets) -> the record of :func:`evaluate`
EvaluateFn = Callable[[str, dict[str, Any], str, list[str]], dict[str, Any]]


def evaluation_sets(ctx: StageContext, role: str, split: str, task: str | None = None) -> list[str]:
    """The sets a model is scored on: ``role`` is ``base``, ``single`` (fine-tuned on ``task``) or ``variant``.

    The base always gets every task and the control (drift is measured against it). A single-task
    model needs only its own task for normalized accuracy (``evaluate.singles: own``); a merged
    variant skips the control on validation when ``evaluate.validation_control`` is off, because
    selection reads only the task accuracies.
    """
    p = ctx.params
    every = [*p.task_names, p.control]
    if role == "single" and p.evaluate.singles == "own":
        if task is None:
            raise ValueError("evaluation_sets: a single-task model needs its task")
        return [task]
    if role == "variant" and split == "validation" and not p.evaluate.validation_control:
        return list(p.task_names)
    return every


def evaluate(ctx: StageContext, name: str, model_path: str, split: str, data: dict[str, Any],
             sets: list[str] | None = None) -> dict[str, Any]:
    """Accuracy of one model folder on ``split`` of ``sets`` (default: every task and the control set)."""
    from mergeline.evaluate import evaluate_model, load_causal_lm

    chosen = sets if sets is not None else evaluation_sets(ctx, "base", split)
    files = {t: ctx.root / data["tasks"][t][split]["path"] for t in chosen}
    ctx.say(f"evaluate[{split}]: {name}")
    record: dict[str, Any] = {"name": name, "split": split}
    with timed(record):
        model, tokenizer = load_causal_lm(ctx.root / model_path, ctx.device)
        kinds = data.get("kinds", {})
        metrics = evaluate_model(model, tokenizer, files, batch_size=ctx.params.evaluate.batch_size,
                                 device=ctx.device, max_length=ctx.params.evaluate.max_length,
                                 metrics={t: kinds[t]["metric"] for t in chosen if t in kinds})
        del model
    record["metrics"] = {t: m["acc"] for t, m in metrics.items()}
    record["raw"] = metrics
    return record


def correctness(evaluation: dict[str, Any]) -> dict[str, str]:
    """``{set: "0110..."}``: per-example correctness of an evaluation record (empty for a placeholder)."""
    return {t: m.get("correct", "") for t, m in (evaluation.get("raw") or {}).items()}


def summarize(ctx: StageContext, evaluation: dict[str, Any], base: dict[str, Any],
              singles: dict[str, dict[str, Any]] | None) -> dict[str, float]:
    """Per-task accuracy, normalized accuracy (÷ the single-task model of the same mode), control drift
    (when the evaluation has the control set)."""
    p = ctx.params
    acc = evaluation["metrics"]
    row: dict[str, float] = {}
    norm = []
    for task in p.task_names:
        row[f"acc/{task}"] = acc[task]
        if singles is not None:
            reference = singles[task]["metrics"][task]
            row[f"norm_acc/{task}"] = acc[task] / reference if reference > 0 else 0.0
            norm.append(row[f"norm_acc/{task}"])
    row["acc/mean"] = sum(acc[t] for t in p.task_names) / len(p.task_names)
    if norm:
        row["norm_acc/mean"] = sum(norm) / len(norm)
    if p.control in acc:  # validation may skip it (evaluate.validation_control)
        row["acc/control"] = acc[p.control]
        row["control_drift"] = acc[p.control] - base["metrics"][p.control]
    return row


def write_metrics(ctx: StageContext, records: dict[str, Any]) -> Path:
    """``work_dir/eval/metrics.json`` (the evaluate stage's DVC metrics file): champion, test and validation rows."""
    path = ctx.work / "eval" / "metrics.json"
    champion = records["selection"]["ranking"][0]
    write_json(path, {"champion": champion, "test": records["test_rows"], "validation": records["validation_rows"]})
    return path


def registered_variants(ctx: StageContext, records: dict[str, Any]) -> list[str]:
    """The variants the register stage registers: the champion and ``registry.candidates`` runners-up."""
    return records["selection"]["ranking"][: 1 + ctx.params.registry.candidates]


def select_best(rows: dict[str, dict[str, float]], variants: dict[str, dict[str, Any]],
                by: str = "norm_acc/mean") -> dict[str, Any]:
    """Best variant per method on the validation score ``by``, then the overall ranking.

    Ties go to the smaller |λ| (the smaller edit), then to the name, so the choice is deterministic.
    """
    def key(name: str) -> tuple[float, float, str]:
        return (-rows[name][by], abs(variants[name]["lambda"]), name)

    best: dict[str, str] = {}
    for name in rows:
        method = variants[name]["method"]
        if method not in best or key(name) < key(best[method]):
            best[method] = name
    return {"best_per_method": best, "ranking": sorted(best.values(), key=key), "by": by}


def evaluate_experiment(ctx: StageContext, base: dict[str, Any], checkpoints: dict[str, dict[str, Any]],
                        merged: dict[str, dict[str, Any]], variants: dict[str, dict[str, Any]],
                        ev: EvaluateFn) -> dict[str, Any]:
    """The evaluation plan of one experiment, with ``ev`` scoring one model (a Prefect task or a plain call).

    The base on both splits; each single-task model (``checkpoints``, keys ``task:mode``) on test, and
    on validation too when selection uses normalized accuracy; every merged variant on validation;
    each method's best variant on test. Returns ``reference``, ``validation_rows``, ``test_rows``,
    ``test_correct`` (per-example correctness of those test scores, for paired tests) and ``selection``.
    """
    p = ctx.params
    by = p.evaluate.select_by
    reference = {"base": {s: ev("base", base, s, evaluation_sets(ctx, "base", s)) for s in SPLITS}}
    single_splits = SPLITS if by.startswith("norm_acc") else ("test",)
    scored: dict[int, str] = {}  # a given model stands for its task in every mode: scored once
    for key, ck in checkpoints.items():
        label = f"single-{key.replace(':', '-')}"
        if id(ck) in scored:
            reference[label] = reference[scored[id(ck)]]
            continue
        scored[id(ck)] = label
        reference[label] = {s: ev(label, ck, s, evaluation_sets(ctx, "single", s, ck["task"])) for s in single_splits}

    def rows_for(evals: dict[str, dict[str, Any]], split: str) -> dict[str, dict[str, float]]:
        rows = {}
        for name, evaluation in evals.items():
            mode = vector_mode(variants[name]["method"])
            singles = ({t: reference[f"single-{t}-{mode}"][split] for t in p.task_names}
                       if split in single_splits else None)
            rows[name] = summarize(ctx, evaluation, reference["base"][split], singles)
        return rows

    validation = {name: ev(name, rec, "validation", evaluation_sets(ctx, "variant", "validation"))
                  for name, rec in merged.items()}
    validation_rows = rows_for(validation, "validation")
    selection = select_best(validation_rows, variants, by)
    test = {name: ev(name, merged[name], "test", evaluation_sets(ctx, "variant", "test"))
            for name in selection["ranking"]}
    return {"reference": reference, "validation_rows": validation_rows, "test_rows": rows_for(test, "test"),
            "test_correct": {name: correctness(evaluation) for name, evaluation in test.items()},
            "selection": selection}
