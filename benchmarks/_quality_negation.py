"""Task negation (forgetting): θ = θ0 − λ v_t for one task t at a time (METHODS.md §1.1, §2, §3, §5).

v_t is the full task vector (TA), its importance-masked part M_t ⊙ τ_t (STA, from the pipeline's
``compute-importance``) or the TaLoS-sparse vector. Each is merged by the merge library with a
per-model weight of −1 and swept over λ (and STA's density) on the validation split, scoring only
the target task and the control set. λ follows the TA paper's rule (TaLoS code,
``control_threshold = 0.95``): the lowest target accuracy among the points whose control accuracy
is ≥ 0.95 × the base model's; ties go to the smaller λ. If no point qualifies, the smallest λ is
kept and the row says ``control rule unmet``. The chosen point is then scored on test.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from _quality_params import QualityParams, only_tasks
from _quality_steps import block, chance, context, decide, merge_and_evaluate, variant
from _quality_records import correctness, merge_config_dicts
from mergeline.stages.merge import variant_name


def negation_config(params: dict[str, Any], run: Any, spec: dict[str, Any], records: dict[str, Any]
                    ) -> dict[str, Any]:
    """The pipeline's merge config of ``spec`` over the single task of ``params``, with weight −1."""
    config = merge_config_dicts(context(params, run), spec, records)
    for model in config["models"]:
        model["parameters"]["weight"] = -1.0
    return config


def pick(points: list[dict[str, Any]], control_floor: float) -> tuple[dict[str, Any], bool]:
    """(chosen point, whether it met the control rule): lowest target with control ≥ floor."""
    ok = [p for p in points if p["control"] >= control_floor]
    if not ok:
        return min(points, key=lambda p: (abs(p["lambda"]), p["name"])), False
    return min(ok, key=lambda p: (p["target"], abs(p["lambda"]), p["name"])), True


def run_negation(params: dict[str, Any], quality: QualityParams, run: Any, records: dict[str, Any]
                 ) -> dict[str, Any]:
    """Per task and method: the validation sweep, the chosen λ and its test target/control accuracy."""
    q = quality.negation
    control, data = params["control"], records["data"]
    base = records["reference"]["base"]
    floor = q.control_ratio * base["validation"]["metrics"][control]
    out: dict[str, Any] = {}
    for task in q.tasks or params["tasks"]:
        sub = only_tasks(params, [task])
        entry: dict[str, Any] = {
            "chance": chance(Path(run.root), data, task),
            "base": {"target": base["test"]["metrics"][task], "control": base["test"]["metrics"][control]},
            "control_floor_validation": floor, "methods": {},
        }
        for method, sweep in q.methods.items():
            print(f"negation: {task} with {method} ({len(sweep.lambdas)} λ)")
            points, specs = [], {}
            for lam, density in itertools.product(sweep.lambdas, sweep.densities or [None]):
                name = f"neg-{task}-{variant_name(method, lam, density)}"
                spec = variant(name, method, lam, density, sweep.options)
                specs[name] = spec
                ev = merge_and_evaluate(sub, run, spec, negation_config(sub, run, spec, records), "validation",
                                        data, quality.prune_merged)
                points.append({"name": name, "lambda": lam, "density": density,
                               "target": ev["metrics"][task], "control": ev["metrics"][control]})
            with block():  # the choice needs every point (and the base's control accuracy)
                decide(base["validation"])
                chosen, met = pick(points, floor)
                spec = specs[chosen["name"]]
                test = merge_and_evaluate(sub, run, spec, negation_config(sub, run, spec, records), "test", data,
                                          quality.prune_merged)
                decide(test)
                entry["methods"][method] = {
                    "variant": chosen["name"], "lambda": chosen["lambda"], "density": chosen["density"],
                    "control_rule_met": met, "target": test["metrics"][task], "control": test["metrics"][control],
                    "correct": correctness(test),
                    "sweep": points,
                }
        out[task] = entry
    return out
