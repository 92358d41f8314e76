"""Stage ``evaluate``: lm-eval on every task and the control set, and the numbers derived from it."""

from __future__ import annotations

from typing import Any

from mergeline.stages.common import StageContext, timed


def evaluation_sets(ctx: StageContext, role: str, split: str, task: str | None = None) -> list[str]:
    """The sets a model is scored on: ``role`` is ``base``, ``single`` (fine-tuned on ``task``) or ``variant``.

    The base always gets every task and the control (drift is measured against it). A single-task
    model needs only its own task for normalized accuracy (``evaluate.singles: own``); a merged
    variant skips the control on validation when ``evaluate.validation_control`` is off, because
    selection reads only the task accuracies.
    """
    p = ctx.params
    every = [*p.tasks, p.control]
    if role == "single" and p.evaluate.singles == "own":
        if task is None:
            raise ValueError("evaluation_sets: a single-task model needs its task")
        return [task]
    if role == "variant" and split == "validation" and not p.evaluate.validation_control:
        return list(p.tasks)
    return every


def evaluate(ctx: StageContext, name: str, model_path: str, split: str, data: dict[str, Any],
             sets: list[str] | None = None) -> dict[str, Any]:
    """Accuracy of one model folder on ``split`` of ``sets`` (default: every task and the control set)."""
    from mergeline.evaluate import evaluate_model, load_causal_lm

    chosen = sets if sets is not None else [*ctx.params.tasks, ctx.params.control]
    sets = {t: ctx.root / data["tasks"][t][split]["path"] for t in chosen}
    ctx.say(f"evaluate[{split}]: {name}")
    record: dict[str, Any] = {"name": name, "split": split}
    with timed(record):
        model, tokenizer = load_causal_lm(ctx.root / model_path, ctx.device)
        metrics = evaluate_model(model, tokenizer, sets, batch_size=ctx.params.evaluate.batch_size,
                                 device=ctx.device, max_length=ctx.params.evaluate.max_length)
        del model
    record["metrics"] = {t: m["acc"] for t, m in metrics.items()}
    record["raw"] = metrics
    return record


def summarize(ctx: StageContext, evaluation: dict[str, Any], base: dict[str, Any],
              singles: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per-task accuracy, normalized accuracy (÷ the single-task model of the same mode), control drift
    (when the evaluation has the control set)."""
    p = ctx.params
    acc = evaluation["metrics"]
    row: dict[str, float] = {}
    norm = []
    for task in p.tasks:
        row[f"acc/{task}"] = acc[task]
        reference = singles[task]["metrics"][task]
        row[f"norm_acc/{task}"] = acc[task] / reference if reference > 0 else 0.0
        norm.append(row[f"norm_acc/{task}"])
    row["acc/mean"] = sum(acc[t] for t in p.tasks) / len(p.tasks)
    row["norm_acc/mean"] = sum(norm) / len(norm)
    if p.control in acc:  # validation may skip it (evaluate.validation_control)
        row["acc/control"] = acc[p.control]
        row["control_drift"] = acc[p.control] - base["metrics"][p.control]
    return row


def select_best(rows: dict[str, dict[str, float]], variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Best variant per method on validation mean normalized accuracy, then the overall ranking.

    Ties go to the smaller |λ| (the smaller edit), then to the name, so the choice is deterministic.
    """
    best: dict[str, str] = {}
    for name, row in rows.items():
        method = variants[name]["method"]
        key = (row["norm_acc/mean"], -abs(variants[name]["lambda"]), name)
        current = best.get(method)
        if current is None or key > (rows[current]["norm_acc/mean"], -abs(variants[current]["lambda"]), current):
            best[method] = name
    ranking = sorted(best.values(), key=lambda n: (-rows[n]["norm_acc/mean"], abs(variants[n]["lambda"]), n))
    return {"best_per_method": best, "ranking": ranking}
