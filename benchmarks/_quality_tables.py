"""Markdown tables of the quality benchmark: every number is the mean over seeds ± the sample standard
deviation (``± –`` with one seed), from the per-seed result dicts ``quality.py`` writes.

Tables: addition (test split, best variant per method chosen on validation), negation, analogy,
cost; then the issue's targets and the seed papers' claims, each marked as holding here or not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

LABELS = {"task_arithmetic": "TA", "ties": "TIES", "dare_ties": "DARE-TIES", "sta": "STA", "metagpt": "MetaGPT",
          "talos": "TaLoS + TA", "lata": "LATA"}
ORDER = list(LABELS)
ADDITION_TARGET, NEGATION_POINTS, CONTROL_RATIO = 0.90, 0.10, 0.95


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: Sequence[float | None], signed: bool = False) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    mean, sd = mean_sd(present)
    head = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{head} ± {'–' if sd is None else f'{sd:.3f}'}"


def _setting(values: Sequence[Any]) -> str:
    seen: list[str] = []
    for value in values:
        text = "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        if text not in seen:
            seen.append(text)
    return "/".join(seen)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def addition_table(results: list[dict[str, Any]]) -> str:
    tasks, control = results[0]["tasks"], results[0]["control"]
    header = ["method", "setting", *[f"{t} acc" for t in tasks], "mean acc", "norm. acc", "control acc",
              "control drift", "seeds"]
    n = str(len(results))

    def reference(label: str, get: Callable[[dict[str, Any]], dict[str, float] | None]) -> list[str] | None:
        found = [get(r) for r in results]
        found = [f for f in found if f]
        if not found:
            return None
        base_ctrl = [r["addition"]["reference"]["base"][control] for r in results]
        cells = [fmt([f[t] for f in found]) for t in tasks]
        means = [statistics.fmean(f[t] for t in tasks) for f in found]
        drift = [f[control] - b for f, b in zip(found, base_ctrl)]
        return [label, "–", *cells, fmt(means), "–", fmt([f[control] for f in found]), fmt(drift, True), str(len(found))]

    rows = [reference("base (zero-shot)", lambda r: r["addition"]["reference"]["base"]),
            reference("single-task fine-tuned (each on its task)", lambda r: r["addition"]["reference"]["single-full"]),
            reference("single-task TaLoS (each on its task)", lambda r: r["addition"]["reference"].get("single-talos")),
            reference("θ_inst: stand-in instruct model (built, see notes)",
                      lambda r: (r.get("lata") or {}).get("reference", {}).get("instruct")),
            reference("experts fine-tuned from θ_inst (each on its task)",
                      lambda r: (r.get("lata") or {}).get("reference", {}).get("experts_own"))]
    body = [row for row in rows if row]
    for method in ORDER:
        picks = [_pick(r, method) for r in results]
        picks = [p for p in picks if p]
        if not picks:
            continue
        setting = "λ=" + _setting([p["lambda"] for p in picks])
        if any(p.get("density") is not None for p in picks):
            setting += ", density=" + _setting([p.get("density") for p in picks])
        if method == "lata":
            setting += ", " + _setting([p["options"].get("scheme", "threshold") for p in picks])
        tests = [p["test"] for p in picks]
        body.append([LABELS[method], setting, *[fmt([t[f"acc/{task}"] for t in tests]) for task in tasks],
                     fmt([t["acc/mean"] for t in tests]), fmt([t["norm_acc/mean"] for t in tests]),
                     fmt([t["acc/control"] for t in tests]), fmt([t["control_drift"] for t in tests], True),
                     str(len(picks)) if len(picks) != int(n) else n])
    return _table(header, body)


def _pick(result: dict[str, Any], method: str) -> dict[str, Any] | None:
    if method == "lata":
        return result.get("lata")
    return result["addition"]["methods"].get(method)


def negation_table(results: list[dict[str, Any]]) -> str:
    header = ["task", "method", "λ", "target acc", "base target acc", "chance", "target − chance", "control acc",
              "control ÷ base", f"target ≤ chance + {NEGATION_POINTS:.2f}", f"control ≥ {CONTROL_RATIO:.0%} of base"]
    body = []
    present = [r["negation"] for r in results if r.get("negation")]
    if not present:
        return "(negation not run)"
    for task in present[0]:
        entries = [p[task] for p in present]
        for method in entries[0]["methods"]:
            picks = [e["methods"][method] for e in entries]
            gaps = [p["target"] - e["chance"] for p, e in zip(picks, entries)]
            ratios = [_ratio(p["control"], e["base"]["control"]) for p, e in zip(picks, entries)]
            lam = _setting([p["lambda"] for p in picks]) + ("" if all(p["control_rule_met"] for p in picks)
                                                             else " (control rule unmet)")
            body.append([task, LABELS[method], lam, fmt([p["target"] for p in picks]),
                         fmt([e["base"]["target"] for e in entries]), f"{statistics.fmean(e['chance'] for e in entries):.3f}",
                         fmt(gaps, True), fmt([p["control"] for p in picks]), fmt(ratios),
                         "yes" if statistics.fmean(gaps) <= NEGATION_POINTS else "no",
                         "yes" if statistics.fmean(ratios) >= CONTROL_RATIO else "no"])
    return _table(header, body)


def analogy_table(results: list[dict[str, Any]]) -> str:
    present = [r["analogy"] for r in results if r.get("analogy")]
    if not present:
        return "(analogy not run)"
    labels = {"base": "base θ0", "transfer": "C only: θ0 + λτ(sentiment, airline)",
              "analogy": "analogy: θ0 + λ(τ_C + μτ_B − μτ_A)", "oracle": "oracle: θ0 + λτ(sentiment, other)"}
    body = [[label, _setting([p["rows"][k]["setting"] for p in present]),
             fmt([p["rows"][k]["target"] for p in present]), fmt([p["rows"][k]["control"] for p in present])]
            for k, label in labels.items()]
    return _table(["model", "setting", "sentiment acc on other tweets (D, test)", "control acc"], body)


def cost_table(results: list[dict[str, Any]]) -> str:
    present = [r["cost"] for r in results if r.get("cost")]
    if not present:
        return "(cost not measured)"
    gpu = any((e.get("merge") or {}).get("peak_gpu_gb") is not None for c in present for e in c.values())
    body = []
    for method in ORDER:
        entries = [c[method] for c in present if method in c]
        if not entries:
            continue
        imp = [e["importance"] for e in entries if e.get("importance")]
        merge = [e["merge"] for e in entries]
        stage = {"sta": "Taylor importance, all tasks", "talos": "sensitivity masks, all tasks"}.get(method, "none")
        row = [LABELS[method], stage, fmt([i["wall_s"] for i in imp]), fmt([i["peak_rss_gb"] for i in imp]),
               fmt([m["wall_s"] for m in merge]), fmt([m["inner_s"] for m in merge]),
               fmt([m["peak_rss_gb"] for m in merge])]
        if gpu:
            row[4:4] = [fmt([i.get("peak_gpu_gb") for i in imp])]
            row.append(fmt([m.get("peak_gpu_gb") for m in merge]))
        body.append(row + [str(len(entries))])
    header = ["method", "importance stage", "importance wall s", "importance peak RSS GB", "merge wall s",
              "merge inner s", "merge peak RSS GB"]
    if gpu:
        header[4:4] = ["importance peak GPU GB"]
        header.append("merge peak GPU GB")
    return _table(header + ["seeds"], body)


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    """The issue's two targets and the seed papers' claims, each with the numbers behind the verdict."""
    lines = []
    norm = {m: [p["test"]["norm_acc/mean"] for p in (_pick(r, m) for r in results) if p] for m in ORDER}
    norm = {m: v for m, v in norm.items() if v}
    gains = []
    for label, key in (("full", "single-full"), ("TaLoS", "single-talos")):
        found = [r["addition"]["reference"].get(key) for r in results]
        if all(found):
            gains.append(f"{label} {fmt([_gain(f, r) for f, r in zip(found, results)], True)}")
    experts = [(r.get("lata") or {}).get("reference", {}).get("experts_own") for r in results]
    if all(experts):
        gains.append(f"θ_inst experts {fmt([_gain(e, r) for e, r in zip(experts, results)], True)}")
    if gains:
        lines.append("- Context: single-task models gain over the base (mean test accuracy on their own tasks): "
                     + "; ".join(gains) + ". Normalized accuracy divides by these models, so it says little "
                     "where they barely beat the base.")
    if norm:
        best = max(norm, key=lambda m: statistics.fmean(norm[m]))
        value = statistics.fmean(norm[best])
        lines.append(f"- Target, addition ≥ {ADDITION_TARGET:.0%} normalized accuracy over "
                     f"{len(results[0]['tasks'])} tasks: {'REACHED' if value >= ADDITION_TARGET else 'NOT reached'} "
                     f"(best: {LABELS[best]} {fmt(norm[best])}).")
    for r_task, ok in _negation_targets(results).items():
        lines.append(f"- Target, negation of {r_task} (target within {NEGATION_POINTS * 100:.0f} points of chance, "
                     f"control ≥ {CONTROL_RATIO:.0%} of base): {ok}.")
    ta = norm.get("task_arithmetic")
    for method in ("sta", "talos", "lata", "metagpt", "ties", "dare_ties"):
        if ta and method in norm:
            lines.append("- Claim, " + _compare(f"{LABELS[method]} beats TA on addition (normalized accuracy)",
                                                norm[method], ta, higher_is_better=True))
    for method in ("sta", "talos"):
        mine, base = _negation_values(results, method), _negation_values(results, "task_arithmetic")
        if mine and base:
            lines.append("- Claim, " + _compare(f"{LABELS[method]} forgets better than TA (mean target accuracy over "
                                                "tasks at the control rule)", mine, base, higher_is_better=False))
    return lines


def _ratio(control: float, base: float) -> float:
    """control ÷ base; a base at 0 (a random model) counts as kept when control is not below it."""
    return control / base if base > 0 else (1.0 if control >= base else 0.0)


def _gain(own: dict[str, float], result: dict[str, Any]) -> float:
    base = result["addition"]["reference"]["base"]
    return statistics.fmean(own[t] - base[t] for t in result["tasks"])


def _negation_targets(results: list[dict[str, Any]]) -> dict[str, str]:
    present = [r["negation"] for r in results if r.get("negation")]
    out = {}
    for task in present[0] if present else []:
        entries = [p[task] for p in present]
        reached = []
        for method in entries[0]["methods"]:
            gap = statistics.fmean(e["methods"][method]["target"] - e["chance"] for e in entries)
            ratio = statistics.fmean(_ratio(e["methods"][method]["control"], e["base"]["control"]) for e in entries)
            if gap <= NEGATION_POINTS and ratio >= CONTROL_RATIO:
                reached.append(LABELS[method])
        out[task] = f"REACHED by {', '.join(reached)}" if reached else "NOT reached by any method"
    return out


def _negation_values(results: list[dict[str, Any]], method: str) -> list[float]:
    values = []
    for r in results:
        neg = r.get("negation") or {}
        per_task = [e["methods"][method]["target"] for e in neg.values() if method in e["methods"]]
        if per_task:
            values.append(statistics.fmean(per_task))
    return values


def _compare(claim: str, mine: list[float], other: list[float], higher_is_better: bool) -> str:
    (a, sa), (b, sb) = mean_sd(mine), mean_sd(other)
    diff = (a - b) if higher_is_better else (b - a)
    spread = (sa or 0.0) + (sb or 0.0)
    if diff > spread and diff > 0:
        verdict = "HOLDS here"
    elif diff > 0:
        verdict = "holds on the mean only, within the seeds' spread" if spread else "holds on the mean (one seed: no spread)"
    else:
        verdict = "does NOT hold here"
    return f"{claim}: {verdict} ({fmt(mine)} vs {fmt(other)})."
