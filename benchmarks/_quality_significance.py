"""Section "1b" of the quality report: one seed's addition and negation results with 95% intervals and
paired tests against TA on the same test examples (issue 13).

Reads the per-example correctness the evaluation now keeps (``correct`` in the per-seed JSON:
``addition.correct`` for the base and single-task models, ``addition.methods.<m>.correct``,
``lata.correct``, ``negation.<task>.methods.<m>.correct``). Results saved before that (no vectors)
render as ``(no per-example scores in this result)``.
"""

from __future__ import annotations

from typing import Any

from _quality_stats import acc_cell, compare, compare_cell, mean_cell, verdict
from _quality_tables import LABELS, ORDER, _table


def _entries(result: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(method key, row label, {set: bits}) of the reference models and each method's chosen variant."""
    add = result["addition"]
    correct = add.get("correct") or {}
    rows = [("base", "base (zero-shot)", correct.get("base") or {}),
            ("single-full", "single-task fine-tuned (each on its task)", correct.get("single-full") or {})]
    if correct.get("single-talos"):
        rows.append(("single-talos", "single-task TaLoS (each on its task)", correct["single-talos"]))
    for method in ORDER:
        entry = result.get("lata") if method == "lata" else add["methods"].get(method)
        if entry:
            rows.append((method, LABELS[method], entry.get("correct") or {}))
    return rows


def addition_significance(result: dict[str, Any]) -> tuple[str, list[str]]:
    """Per-task accuracy [Wilson 95%], mean accuracy [bootstrap 95%], Δ vs TA [paired bootstrap] and McNemar p."""
    tasks, control = result["tasks"], result["control"]
    rows = _entries(result)
    ta = next((bits for key, _, bits in rows if key == "task_arithmetic"), None)
    if not ta or not all(ta.get(t) for t in tasks):
        return "(no per-example scores in this result)", []
    header = ["model", *[f"{t} acc [95% CI]" for t in tasks], "mean acc [95% CI]", f"{control} acc [95% CI]",
              "Δ mean acc vs TA [95% CI], McNemar p"]
    body, claims = [], []
    for key, label, bits in rows:
        is_single = key.startswith("single-")
        result_vs = None if is_single else compare(bits, ta, tasks)
        cell = "–" if is_single else compare_cell(result_vs, key == "task_arithmetic")
        body.append([label, *[acc_cell(bits.get(t)) for t in tasks], mean_cell(bits, tasks),
                     acc_cell(bits.get(control)), cell])
        if key in LABELS and key != "task_arithmetic":
            claims.append(f"- {LABELS[key]} vs TA (seed {result['seed']}): {verdict(result_vs)}.")
    single = next((bits for key, _, bits in rows if key == "single-full"), {})
    interference = compare(ta, single, tasks)
    if interference:
        claims.append(f"- Interference: TA's chosen variant vs the single-task experts (seed {result['seed']}): "
                      f"{verdict(interference).replace('better', 'above').replace('worse', 'below')}.")
    return _table(header, body), claims


def negation_significance(result: dict[str, Any]) -> str:
    """Target and control accuracy [Wilson 95%] at the chosen λ; McNemar p of the target against the base."""
    neg = result.get("negation") or {}
    base = (result["addition"].get("correct") or {}).get("base") or {}
    control = result["control"]
    body = []
    for task, entry in neg.items():
        for method, chosen in entry["methods"].items():
            bits = chosen.get("correct") or {}
            vs_base = compare({task: bits.get(task, "")}, {task: base.get(task, "")}, [task])
            body.append([task, LABELS[method], f"{chosen['lambda']:g}", acc_cell(bits.get(task)),
                         acc_cell(base.get(task)), f"{entry['chance']:.3f}", acc_cell(bits.get(control)),
                         acc_cell(base.get(control)), f"{vs_base['p']:.3g}" if vs_base else "–"])
    if not body:
        return "(negation not run)"
    return _table(["task", "method", "λ", "target acc [95% CI]", "base target acc [95% CI]", "chance",
                   "control acc [95% CI]", "base control acc [95% CI]", "target vs base: McNemar p"], body)


def significance_section(results: list[dict[str, Any]]) -> list[str]:
    """The report's section 1b (the first seed: intervals are per test set, not over seeds)."""
    first = results[0]
    table, claims = addition_significance(first)
    return [f"## 1b. Addition and negation with 95% intervals and paired tests (seed {first['seed']})",
            "Wilson intervals per test set; mean over tasks with a task-stratified bootstrap interval; Δ vs TA: "
            "paired bootstrap on the same examples, p: exact McNemar on all of them (`*`: p < 0.05).",
            table, *(["\n".join(claims)] if claims else []), negation_significance(first)]
