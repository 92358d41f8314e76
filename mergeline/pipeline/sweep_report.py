"""Tables and plots over several pipeline runs of one experiment: seeds and grids as sweeps.

Runs are grouped by the params that differ between them, seeds (any key ending in ``seed``) and
output folders (``work_dir``, ``data_dir``) aside:
``mergeline run --set finetune.seed=N`` repeated is one group of N runs; ``--set finetune.lr=…``
repeated is one group per learning rate. Per group and method (each run's best variant of that
method on validation, as the run chose it) the table gives the test scores' mean ± sample standard
deviation over the group's runs, the λ each run chose, and how often the method was the champion;
the plot draws the validation score of every variant against λ, averaged over the runs.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeline.pipeline.claims import Comparison, addition_comparisons, analogy_comparisons, negation_comparisons
from mergeline.pipeline.records import EditChoice, encode
from mergeline.plots import plot_sweep


@dataclass(frozen=True)
class Variant:
    """A merged variant as its merge call logged it."""

    method: str
    lam: float
    density: float | None


@dataclass(frozen=True)
class PipelineRun:
    """One finished ``mergeline run``: its params and its evaluation (``eval/metrics.json``)."""

    run_id: str
    params: dict[str, str]  # as logged: nested keys joined with '.'
    validation: dict[str, dict[str, float]]  # variant -> its validation row
    test: dict[str, dict[str, float]]  # each method's best variant -> its test row
    champion: str | None
    edits: tuple[EditChoice, ...] = ()  # negation and analogy choices, each scored on test
    base: dict[str, float] | None = None  # the base model on test (set -> accuracy), when the run has edits
    correct: dict[str, dict[str, str]] = field(default_factory=dict)  # "base" / variant -> set -> "0110..."


SCORES = (("acc/mean", "test acc"), ("norm_acc/mean", "norm. acc"), ("control_drift", "control drift"))


@dataclass(frozen=True)
class Group:
    setting: dict[str, str]  # the params that set this group apart (empty: one group)
    runs: tuple[PipelineRun, ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setting.items()) or "all runs"


def is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1].endswith("seed")


# Where a run writes is not a setting: a sweep gives each point its own folders.
OUTPUT_KEYS = ("work_dir", "data_dir")


def group_runs(runs: Sequence[PipelineRun]) -> list[Group]:
    """Runs grouped by the values of the params that differ between them, seeds and output folders aside."""
    keys = sorted({key for run in runs for key in run.params} - set(OUTPUT_KEYS))
    grid = [k for k in keys if not is_seed(k) and len({run.params.get(k) for run in runs}) > 1]
    groups: dict[tuple[str | None, ...], list[PipelineRun]] = {}
    for run in runs:
        groups.setdefault(tuple(run.params.get(k) for k in grid), []).append(run)
    return [Group({k: str(v) for k, v in zip(grid, values)}, tuple(members)) for values, members in groups.items()]


def _method(name: str, variants: dict[str, Variant]) -> str:
    return variants[name].method if name in variants else name.split("_l", 1)[0]


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def method_rows(group: Group, variants: dict[str, Variant]) -> dict[str, dict[str, Any]]:
    """Per method: each run's best variant (its test row) and those rows' scores."""
    rows: dict[str, dict[str, Any]] = {}
    for run in group.runs:
        for name, scores in run.test.items():
            row = rows.setdefault(_method(name, variants), {"variants": [], "champion": 0,
                                                            **{key: [] for key, _ in SCORES}})
            row["variants"].append(name)
            row["champion"] += run.champion == name
            for key, _ in SCORES:
                if key in scores:
                    row[key].append(scores[key])
    return dict(sorted(rows.items()))


def group_table(group: Group, variants: dict[str, Variant]) -> str:
    runs = len(group.runs)
    header = ["method", "runs", "λ chosen", *[label for _, label in SCORES], "champion"]
    lines = [f"### {group.label} ({runs} run{'s' if runs != 1 else ''})", "",
             "| " + " | ".join(header) + " |", "|---|---:|---|" + "---:|" * (len(SCORES) + 1)]
    for method, row in method_rows(group, variants).items():
        chosen = [f"{variants[n].lam:g}" if n in variants else n for n in row["variants"]]
        cells = [method, str(len(row["variants"])), ", ".join(chosen), *[_spread(row[key]) for key, _ in SCORES],
                 f"{row['champion']} of {runs}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def edits_table(group: Group) -> str:
    """Per edit (negated task × method, analogy setting): the λ each run chose, the target and control
    accuracy on test (mean ± sd over the runs) beside the base's, and how many runs met the control rule."""
    rows: dict[tuple[str, str, str], list[tuple[EditChoice, PipelineRun]]] = {}
    for run in group.runs:
        for choice in run.edits:
            rows.setdefault((choice.edit, choice.task, choice.method), []).append((choice, run))
    if not rows:
        return ""
    lines = ["| edit | task | method | runs | λ chosen | target acc | base target | control acc | base control "
             "| control rule met |", "|---|---|---|---:|---|---:|---:|---:|---:|---|"]
    for (edit, task, method), found in rows.items():
        control = found[0][1].params.get("control", "control")
        base = [r.base or {} for _, r in found]
        rule = f"{sum(c.rule_met for c, _ in found)} of {len(found)}" if edit == "negation" else "–"
        cells = [edit, task, method, str(len(found)), ", ".join(f"{c.chosen.lam:g}" for c, _ in found),
                 _spread([c.test["target"] for c, _ in found]), _spread([b[task] for b in base if task in b]),
                 _spread([c.test["control"] for c, _ in found if "control" in c.test]),
                 _spread([b[control] for b in base if control in b]), rule]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_comparisons(group: Group, variants: dict[str, Variant]) -> list[Comparison]:
    """Each method against task arithmetic, each negation against the base, the analogy against τ_C alone
    and the base, pooled over the group's runs (:mod:`mergeline.pipeline.claims`); none where the runs
    recorded no per-example scores."""
    control = group.runs[0].params.get("control", "control")
    tasks = [t for t in group.runs[0].correct.get("base", {}) if t != control]
    addition = [({_method(name, variants): name for name in run.test}, run.correct) for run in group.runs]
    negation = [({(c.task, c.method): c.correct for c in run.edits if c.edit == "negation"},
                 run.correct.get("base", {})) for run in group.runs]
    analogy = [({c.edit: (c.task, c.correct.get(c.task, "")) for c in run.edits if c.edit in ("transfer", "analogy")},
                run.correct.get("base", {})) for run in group.runs]
    return [*(addition_comparisons(addition, tasks) if tasks else []), *negation_comparisons(negation),
            *analogy_comparisons(analogy)]


def comparisons_table(comparisons: Sequence[Comparison]) -> str:
    lines = ["| claim (A − B) | n | runs | Δ [95% CI] | McNemar p | verdict |", "|---|---:|---:|---|---:|---|"]
    lines += [f"| {c.claim} | {c.n} | {c.runs} | {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}] | {c.p:.2g} "
              f"| {c.verdict} |" for c in comparisons]
    return "\n".join(lines)


def sweep_curves(group: Group, variants: dict[str, Variant], score: str) -> dict[str, list[tuple[float, float]]]:
    """Validation ``score`` against λ per method (and density), averaged over the group's runs."""
    points: dict[str, dict[float, list[float]]] = {}
    for run in group.runs:
        for name, row in run.validation.items():
            if name not in variants or score not in row:
                continue
            variant = variants[name]
            label = variant.method + (f" d={variant.density:g}" if variant.density is not None else "")
            points.setdefault(label, {}).setdefault(variant.lam, []).append(row[score])
    return {label: sorted((lam, statistics.mean(values)) for lam, values in by_lam.items())
            for label, by_lam in sorted(points.items())}


def write_report(experiment: str, runs: Sequence[PipelineRun], variants: dict[str, Variant], out: Path) -> str:
    """Into the new folder ``out``: ``report.md`` (a table per group), ``report.json`` (every run's
    rows), one sweep plot per group (``sweep-<n>.png``); returns the markdown."""
    groups = group_runs(runs)
    parts = [f"# {experiment}: {len(runs)} pipeline run{'s' if len(runs) != 1 else ''}", ""]
    for number, group in enumerate(groups, 1):
        parts += [group_table(group, variants), ""]
        if edits := edits_table(group):
            parts += ["Negation and analogy (each run's point chosen on validation, scored on test):", "", edits, ""]
        if comparisons := paired_comparisons(group, variants):
            parts += ["Paired on the same test examples, pooled over the runs (mergeline/pipeline/claims.py):", "",
                      comparisons_table(comparisons), ""]
        score = group.runs[0].params.get("evaluate.select_by", "acc/mean")
        curves = sweep_curves(group, variants, score)
        if curves:
            plot = plot_sweep(curves, out / f"sweep-{number}.png", ylabel=f"validation {score}", title=group.label)
            parts += [f"![validation {score} against λ]({plot.name})", ""]
    text = "\n".join(parts)
    (out / "report.md").write_text(text, encoding="utf-8")
    record = {"experiment": experiment, "groups": [
        {"setting": group.setting, "runs": [
            {"run_id": run.run_id, "params": run.params, "champion": run.champion, "test": run.test,
             "validation": run.validation, "edits": encode(run.edits), "base": run.base} for run in group.runs]}
        for group in groups],
        "variants": {name: vars(variant) for name, variant in sorted(variants.items())}}
    (out / "report.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return text


__all__ = ["Group", "PipelineRun", "Variant", "comparisons_table", "edits_table", "group_runs", "group_table",
           "method_rows", "paired_comparisons", "sweep_curves", "write_report"]
