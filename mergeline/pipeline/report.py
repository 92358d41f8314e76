"""The results table printed at the end of a run (and logged to MLflow as ``results.md``): addition, then the edits."""

from __future__ import annotations

from mergeline.params import ExperimentParams
from mergeline.pipeline.records import Experiment


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def results_table(params: ExperimentParams, exp: Experiment) -> str:
    """Markdown: per method (its best variant on validation), per-task test accuracy, mean normalized
    accuracy (merged ÷ single-task fine-tuned), control accuracy and drift from the base."""
    tasks = params.task_names
    header = ["model", *[f"{t} acc" for t in tasks], "mean acc", "norm. acc", "control acc", "control drift"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    assert exp.scores is not None
    scores = exp.scores
    reference = scores.reference
    base_test = reference["base"]["test"].metrics

    def ref_row(label: str, metrics: dict[str, float], norm: float | None) -> list[str]:
        # a single-task model may be scored on its own task only (evaluate.singles: own): "–" elsewhere
        mean = sum(metrics[t] for t in tasks) / len(tasks) if all(t in metrics for t in tasks) else None
        control = metrics.get(params.control)
        drift = None if control is None else control - base_test[params.control]
        return [label, *[_fmt(metrics.get(t)) for t in tasks], _fmt(mean), _fmt(norm), _fmt(control),
                _fmt(drift, signed=True)]

    lines.append("| " + " | ".join(ref_row("base (zero-shot)", base_test, None)) + " |")
    for task in tasks:
        key = f"single-{task}-full"
        source = params.task_entry(task).source
        label = f"fine-tuned on {task} only" if source == "finetune" else f"given {source} for {task}"
        lines.append("| " + " | ".join(ref_row(label, reference[key]["test"].metrics, None)) + " |")
    champion = scores.selection.ranking[0] if scores.selection.ranking else None
    for name in scores.selection.ranking:
        row = scores.test_rows[name]
        label = f"{exp.merged[name].variant.method} ({name})" + (" ★ champion" if name == champion else "")
        cells = [label, *[_fmt(row[f"acc/{t}"]) for t in tasks], _fmt(row["acc/mean"]), _fmt(row["norm_acc/mean"]),
                 _fmt(row["acc/control"]), _fmt(row["control_drift"], signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    edits = edits_table(params, exp)
    return "\n".join(lines) + (f"\n\nNegation and analogy (each point chosen on validation, scored on test):\n\n{edits}"
                               if edits else "")


def edits_table(params: ExperimentParams, exp: Experiment) -> str:
    """Markdown: each edit's chosen point (on validation) on test: target-task and control accuracy
    against the base's; for negation, whether the control rule had a qualifying point."""
    assert exp.scores is not None
    if not exp.scores.edits:
        return ""
    base = exp.scores.reference["base"]["test"].metrics
    lines = ["| edit | task | method | chosen (validation) | target acc | base target | control acc | base control "
             "| control rule |", "|---|---|---|---|---:|---:|---:|---:|---|"]
    for choice in exp.scores.edits:
        chosen = choice.chosen
        setting = f"λ={chosen.lam:g}" + (f", d={chosen.density:g}" if chosen.density is not None else "") + (
            f", μ={chosen.mu:g}" if chosen.mu is not None else "")
        rule = ("met" if choice.rule_met else "unmet") if choice.edit == "negation" else "–"
        lines.append(f"| {choice.edit} | {choice.task} | {choice.method} | {setting} | {_fmt(choice.test['target'])} "
                     f"| {_fmt(base.get(choice.task))} | {_fmt(choice.test.get('control'))} "
                     f"| {_fmt(base.get(params.control))} | {rule} |")
    return "\n".join(lines)
