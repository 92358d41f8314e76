"""LATA addition with a stand-in instruction vector (METHODS.md §4).

LATA needs θ_base (pretrained), θ_inst (its instruct version) and experts fine-tuned from θ_inst.
Offline there is one real causal LM, SmolLM2-135M-Instruct, already instruction-tuned, and no base/
instruct pair. So this benchmark *builds* one, and says so in every table: θ_base = the imported
model, θ_inst = θ_base fine-tuned on a generic instruction-format set (``_quality_data.instruct``),
experts = θ_inst fine-tuned on each task. ι = θ_inst − θ_base is therefore a small formatting
vector, not a real instruction-tuning vector, which LATA's layer similarities then measure.

Stages, all through ``_quality_steps`` (the pipeline's Prefect tasks, or ``--direct``): fine-tune ``instruct`` from the base, fine-tune
``<task>-lata`` from θ_inst, extract τ_t = θ_t − θ_inst, merge ``lata`` onto θ_inst with
``pretrained_model`` = θ_base for every (options, λ), evaluate. Normalized accuracy divides by the
experts' single-task accuracy; control drift is against the original base, like every other row.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from _quality_data import instruct_splits
from _quality_params import QualityParams, with_finetune
from _quality_steps import (
    block, context, decide, evaluate, extract_vector, finetune, merge_and_evaluate, own_accuracies, release, variant,
    write_dataset,
)
from mergeline.data.common import Sizes
from _quality_records import correctness, select_best_dicts as select_best, summarize_dicts as summarize

INSTRUCT = "instruct"


def _name(options: dict[str, Any], lam: float) -> str:
    detail = "_".join(f"{k}{v}" for k, v in sorted(options.items()) if k != "scheme")
    return f"lata_{options.get('scheme', 'threshold')}" + (f"_{detail}" if detail else "") + f"_l{lam:g}"


def run_lata(params: dict[str, Any], quality: QualityParams, run: Any, records: dict[str, Any]
             ) -> dict[str, Any] | None:
    """Build θ_inst and the experts, sweep LATA on validation, report the best variant on test.

    ``None`` only while the direct backend still has steps to compute (see ``_quality_steps.block``).
    """
    q = quality.lata
    root, ctx = Path(run.root), context(params, run)
    tasks, base = params["tasks"], records["base"]
    data = copy.deepcopy(records["data"])
    sizes = Sizes(q.instruct.n_train, q.instruct.n_validation, q.instruct.n_test)
    print(f"lata: building the instruction-format set ({sizes.total} records) and θ_inst")
    data["tasks"][INSTRUCT] = write_dataset(root, params["data_dir"], INSTRUCT,
                                            instruct_splits(sizes, params["data"]["seed"]))
    inst_params = with_finetune(params, q.instruct.finetune, "quality.lata.instruct")
    inst = finetune(inst_params, run, INSTRUCT, "full", base, data)
    experts = {t: finetune(params, run, t, "lata", inst, data) for t in tasks}
    vectors = {t: extract_vector(params, run, inst, ck) for t, ck in experts.items()}

    reference = {INSTRUCT: {s: evaluate(params, run, INSTRUCT, inst, s, data) for s in ("validation", "test")}}
    for t, ck in experts.items():
        reference[f"single-{t}-lata"] = {s: evaluate(params, run, f"single-{t}-lata", ck, s, data)
                                         for s in ("validation", "test")}
        release(run, ck, vectors[t], reference[f"single-{t}-lata"])  # θ_inst stays: it is LATA's base
    base_eval = records["reference"]["base"]

    def row(evaluation: dict[str, Any], split: str) -> dict[str, float]:
        singles = {t: reference[f"single-{t}-lata"][split] for t in tasks}
        return summarize(ctx, evaluation, base_eval[split], singles)

    specs, configs, validation = {}, {}, {}
    for options, lam in itertools.product(q.options, q.lambdas):
        spec = variant(_name(options, lam), "lata", lam, None, options)
        config = {
            "merge_method": "lata", "base_model": inst["path"], "dtype": "float32",
            "models": [{"model": vectors[t]["path"], "parameters": {"weight": 1.0}} for t in tasks],
            # absolute: the merge stage only resolves base/model/importance paths against the root
            "parameters": {**options, "lambda": lam, "pretrained_model": str(root / base["path"])},
        }
        specs[spec["name"]], configs[spec["name"]] = spec, config
        validation[spec["name"]] = merge_and_evaluate(params, run, spec, config, "validation", data,
                                                      quality.prune_merged)
    result = None
    with block():
        decide(reference)
        rows = {name: row(ev, "validation") for name, ev in validation.items()}
        best = select_best(rows, specs)["best_per_method"]["lata"]
        scored = merge_and_evaluate(params, run, specs[best], configs[best], "test", data, quality.prune_merged)
        decide(scored)
        result = _result(best, specs, configs, rows, row(scored, "test"), scored, reference, inst, tasks, params)
    return result


def _result(best: str, specs: dict[str, Any], configs: dict[str, Any], rows: dict[str, Any], test: dict[str, Any],
            scored: dict[str, Any], reference: dict[str, Any], inst: dict[str, Any], tasks: list[str],
            params: dict[str, Any]) -> dict[str, Any]:
    report = (scored["merge"].get("report") or {}).get("method") or {}  # the merge method's own report
    weights = report.get("layer_weights") or {}
    return {
        "variant": best, "lambda": specs[best]["lambda"], "options": specs[best]["options"],
        "spec": specs[best], "config": configs[best],
        "test": test, "validation": rows[best], "correct": correctness(scored),
        "reference_correct": {"instruct": correctness(reference[INSTRUCT]["test"]),
                              "experts_own": {t: correctness(reference[f"single-{t}-lata"]["test"]).get(t, "")
                                              for t in tasks}},
        "sweep": [{"name": n, "lambda": specs[n]["lambda"], "options": specs[n]["options"],
                   "norm_acc": rows[n]["norm_acc/mean"]} for n in rows],
        "reference": {
            "instruct": reference[INSTRUCT]["test"]["metrics"],
            "experts_own": own_accuracies({t: reference[f"single-{t}-lata"]["test"]["metrics"] for t in tasks},
                                          params["control"]),
        },
        "layer_weights": {tasks[int(m)]: {int(l): float(w) for l, w in ws.items()} for m, ws in weights.items()},
        "similarity": {tasks[int(m)]: {int(l): float(s) for l, s in ss.items()}
                       for m, ss in (report.get("similarity") or {}).items()},
        "instruct_finetune": inst.get("meta", {}).get("losses", [])[-1:] or None,
    }
