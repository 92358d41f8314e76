"""Markdown tables of the encoder benchmark (``quality_encoder.py``) from its per-seed JSON.

The first seed's table carries the 95% intervals and the paired tests against TA (same test
examples); the last column lists every seed's mean accuracy, so the seed spread is visible too.
"""

from __future__ import annotations

import statistics
from typing import Any

from _quality_stats import acc_cell, compare, compare_cell, mean_cell, verdict

LABELS = {"task_arithmetic": "TA", "ties": "TIES", "dare_ties": "DARE-TIES", "metagpt": "MetaGPT"}


def _acc(bits: str) -> float:
    return bits.count("1") / len(bits)


def _mean(correct: dict[str, str], tasks: list[str]) -> float:
    return sum(_acc(correct[t]) for t in tasks) / len(tasks)


def _seeds(values: list[float]) -> str:
    head = "/".join(f"{v:.3f}" for v in values)
    return head + (f" (sd {statistics.stdev(values):.3f})" if len(values) > 1 else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *["| " + " | ".join(r) + " |" for r in rows]])


def _own(result: dict[str, Any]) -> dict[str, str]:
    return {t: result["experts"][t]["correct"]["test"][t] for t in result["tasks"]}


def addition(results: list[dict[str, Any]]) -> tuple[str, list[str]]:
    first, tasks = results[0], results[0]["tasks"]
    ta = first["addition"]["methods"].get("task_arithmetic", {}).get("correct")
    own = _own(first)
    header = ["model", "setting", *[f"{t} acc [95% CI]" for t in tasks], "mean acc [95% CI]", "norm. acc",
              "Δ mean acc vs TA [95% CI], McNemar p", "mean acc, each seed"]
    rows = []

    def add(label: str, setting: str, correct: dict[str, str], per_seed: list[float], vs: str) -> None:
        norm = sum(_acc(correct[t]) / _acc(own[t]) for t in tasks) / len(tasks)
        rows.append([label, setting, *[acc_cell(correct[t]) for t in tasks], mean_cell(correct, tasks),
                     f"{norm:.3f}", vs, _seeds(per_seed)])

    add("base θ0 (frozen heads)", "–", first["base"]["test"], [_mean(r["base"]["test"], tasks) for r in results],
        compare_cell(compare(first["base"]["test"], ta, tasks)))
    add("experts (each on its task)", "lr=" + "/".join(f"{first['experts'][t]['lr']:g}" for t in tasks), own,
        [_mean(_own(r), tasks) for r in results], "–")
    claims = []
    for method, label in LABELS.items():
        entry = first["addition"]["methods"].get(method)
        if not entry:
            continue
        setting = "λ=" + ("closed form" if entry["lambda"] is None else f"{entry['lambda']:g}")
        if entry.get("density") is not None:
            setting += f", density={entry['density']:g}"
        result = compare(entry["correct"], ta, tasks)
        add(label, setting, entry["correct"],
            [_mean(r["addition"]["methods"][method]["correct"], tasks) for r in results],
            compare_cell(result, method == "task_arithmetic"))
        if method != "task_arithmetic":
            claims.append(f"{label} vs TA (encoder, seed {first['seed']}): {verdict(result)}")
    ta1 = [p for p in first["addition"]["sweep"] if p["method"] == "task_arithmetic" and p["lambda"] == 1.0]
    if ta1:
        claims.append(f"interference: TA at λ = 1 reaches {ta1[0]['norm_acc']:.3f} of the experts' validation accuracy")
    return _table(header, rows), claims


def negation(results: list[dict[str, Any]]) -> str:
    first = results[0]
    header = ["task", "λ", "target acc [95% CI]", "base target acc", "chance", "control acc (other tasks)",
              "control ÷ base", "target vs base: McNemar p", "target acc, each seed"]
    rows = []
    for task, entry in first["negation"].items():
        others = entry["others"]
        control = _mean(entry["correct"], others)
        base_control = _mean(first["base"]["test"], others)
        result = compare({task: entry["correct"][task]}, {task: first["base"]["test"][task]}, [task])
        rows.append([task, f"{entry['lambda']:g}" + ("" if entry["control_rule_met"] else " (rule not met)"),
                     acc_cell(entry["correct"][task]), acc_cell(first["base"]["test"][task]), f"{entry['chance']:.3f}",
                     f"{control:.3f}", f"{control / base_control:.3f}", f"{result['p']:.3g}" if result else "–",
                     _seeds([_acc(r["negation"][task]["correct"][task]) for r in results])])
    return _table(header, rows)


def lr_table(results: list[dict[str, Any]]) -> str:
    first = results[0]
    lrs = list(first["experts"][first["tasks"][0]]["tried"])
    rows = [[t, *[f"{first['experts'][t]['tried'][lr]['validation']:.3f}" for lr in lrs],
             f"{first['experts'][t]['lr']:g}", f"{_acc(first['base']['validation'][t]):.3f}"] for t in first["tasks"]]
    return _table(["task", *[f"val acc, lr {lr}" for lr in lrs], "chosen", "base val acc"], rows)


def render(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    first = results[0]
    table, claims = addition(results)
    sizes = ", ".join(f"{t} {s['train']}/{s['validation']}/{s['test']}" for t, s in params["tasks"].items())
    parts = [
        f"# Encoder family: all-MiniLM-L6-v2, frozen linear heads (seeds {' '.join(str(r['seed']) for r in results)})",
        f"Sizes train/validation/test: {sizes} (code: 2 pairs per record). {params['finetune']['steps']} steps × "
        f"{params['finetune']['batch_size']} per expert. Intervals and tests: seed {first['seed']}.",
        "## Addition (test; best variant per method on validation)", table,
        "## Negation (θ0 − λτ_t; λ: lowest validation target with control ≥ "
        f"{params['negation']['control_ratio']:g} × base)", negation(results),
        f"## Learning rate of the experts (seed {first['seed']}, validation)", lr_table(results),
        "## Claims", "\n".join(f"- {c}" for c in claims),
    ]
    return "\n\n".join(parts) + "\n"
