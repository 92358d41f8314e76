"""Verdicts on the seed papers' claims from the encoder family's seed JSON (``quality_encoder.py``).

    .venv/bin/python benchmarks/encoder_claims.py --results docs/results/claims --out docs

Pools every seed's and task's test examples (paired: the same examples for both sides), and gives for
each claim Δ (A − B) in mean accuracy over tasks with a paired bootstrap 95% interval resampled within
(seed, task) strata, and the exact McNemar p on the pooled examples. Writes ``<results>/claims.json``
(the rows) and the plots ``<out>/claims_lambda.png``, ``claims_lata_weights.png``, ``claims_mask_overlap.png``,
and logs them as one MLflow run of experiment ``mergeline-claims`` (``--tracking-uri``, default the
product's store; ``--no-mlflow`` skips it): each row's Δ, interval ends and p as metrics
``<claim>/diff|low|high|p``, the seeds as a param, the table as the run's description, the plots under
``plots/`` and ``claims.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mergeline.errors import MergelineError  # noqa: E402
from mergeline.io.atomic import atomic_file  # noqa: E402
from mergeline.pipeline import claims  # noqa: E402
from mergeline.tracking import mlflow_setup as tracking  # noqa: E402
from mergeline.tracking.mlflow_setup import NOTE_TAG as NOTE_KEY  # noqa: E402
from mergeline.plots import plot_bars, plot_layer_heatmap, plot_sweep  # noqa: E402


def compare(results: list[dict], a, b) -> claims.Comparison:
    """Δ = A − B over every seed's and task's test examples (:func:`mergeline.pipeline.claims.compare`),
    ``a``/``b`` mapping a seed result to {task: bits}; strata are the (seed, task) pairs. Its
    ``verdict`` reads the claim as A > B; the rows take :func:`verdict`, with the claim's sign."""
    pairs = claims.Pairs("", "", ())
    for r in results:
        got_a, got_b = a(r), b(r)
        for i, t in enumerate(r["tasks"]):
            pairs = pairs.add(got_a[t], got_b[t], r["seed"] * 10 + i)
    return claims.compare("", pairs, len(results), +1, iters=4000)


def verdict(c: claims.Comparison, sign: int = 1) -> str:
    """The report's verdict (:func:`mergeline.pipeline.claims.verdict`, one rule for both) with its reason."""
    said = claims.verdict(c.low, c.high, sign)
    if said == "undecided":
        return f"undecided (CI includes 0 and effects above ±{claims.MARGIN:.2f})"
    if said == "holds here":
        return said
    opposite = max(sign * c.low, sign * c.high) < 0
    return said + (" (the opposite, significantly)" if opposite else f" (no difference: CI within ±{claims.MARGIN:.2f})")


def addition(r, fam, key="test"):
    return r["addition"]["chosen"][fam][key]


def negation_target(fam):
    return lambda r: {t: r["negation"][t]["chosen"][fam]["test"][t] for t in r["tasks"]}


def window(curve: dict[str, float], tol: float = 0.01) -> float:
    """Width of the λ range whose validation score is within ``tol`` of the best (grid step units)."""
    best = max(curve.values())
    good = [float(k) for k, v in curve.items() if v >= best - tol]
    return max(good) - min(good)


def rows(results: list[dict], smol: dict | None) -> list[dict[str, Any]]:
    n_seeds = len(results)
    tasks = results[0]["tasks"]
    out = []

    def row(claim, comparison, c, v, note=""):
        out.append({"claim": claim, "family": "MiniLM-L6 encoder", "comparison": comparison, "n": c.n,
                    "seeds": n_seeds, "diff": c.diff, "low": c.low, "high": c.high, "p": c.p,
                    "verdict": v, "note": note})

    base = lambda r: r["base"]["test"]  # noqa: E731
    c = compare(results, lambda r: addition(r, "TA"), base)
    row("TA addition: θ0 + λΣτ is a multi-task model", "TA (tuned λ) − base θ0, mean acc", c, verdict(c))
    c = compare(results, negation_target("TA"), base)
    ctrl = statistics.mean(
        sum(r["negation"][t]["chosen"]["TA"]["test"][o].count("1") / len(r["negation"][t]["chosen"]["TA"]["test"][o])
            for o in r["negation"][t]["others"]) / 2 / (sum(r["base"]["test"][o].count("1") / len(r["base"]["test"][o])
                                                             for o in r["negation"][t]["others"]) / 2)
        for r in results for t in tasks)
    row("TA negation: θ0 − λτ forgets the task, keeps the control", "TA target acc − base target acc", c,
        verdict(c, -1), f"control kept at {ctrl:.3f} of the base's (mean)")
    for fam, claim in (("STA-tau", "STA beats TA (addition)"), ("TaLoS", "TaLoS addition beats TA"),
                       ("MetaGPT model", "MetaGPT beats tuned TA")):
        c = compare(results, lambda r, f=fam: addition(r, f), lambda r: addition(r, "TA"))
        row(claim, f"{fam} − TA, both at their validation-chosen point", c, verdict(c))
    for fam in ("STA-theta", "TIES", "DARE", "MetaGPT layer", "MetaGPT+TIES", "MetaGPT+DARE"):
        c = compare(results, lambda r, f=fam: addition(r, f), lambda r: addition(r, "TA"))
        row(f"({fam} vs tuned TA)", f"{fam} − TA", c, verdict(c))
    c = compare(results, lambda r: addition(r, "MetaGPT model"), lambda r: addition(r, "TA", "test_lambda1"))
    row("MetaGPT beats untuned TA", "MetaGPT model − TA at λ = 1", c, verdict(c))
    c = compare(results, lambda r: addition(r, "LATA"), lambda r: addition(r, "TA-inst"))
    row("LATA addition beats TA", "LATA − TA on the same θ_inst experts", c, verdict(c))
    # STA flatter in λ: the loss from not tuning (λ = 1 instead of the chosen λ), STA against TA
    c_sta = compare(results, lambda r: addition(r, "STA-tau", "test_lambda1"), lambda r: addition(r, "STA-tau"))
    c_ta = compare(results, lambda r: addition(r, "TA", "test_lambda1"), lambda r: addition(r, "TA"))
    widths = {f: statistics.mean(window(r["addition"]["curves"][r["addition"]["chosen"][f]["variant"]]) for r in results)
              for f in ("STA-tau", "TA")}
    c = compare(results, lambda r: addition(r, "STA-tau", "test_lambda1"), lambda r: addition(r, "TA", "test_lambda1"))
    row("STA flatter in λ (less tuning)", "STA − TA, both untuned at λ = 1", c, verdict(c),
        f"untuned − tuned: STA {c_sta.diff:+.3f}, TA {c_ta.diff:+.3f}; λ window within 1 pt of the best "
        f"(validation): STA {widths['STA-tau']:.2f}, TA {widths['TA']:.2f}")
    for fam, claim in (("STA-tau", "STA forgets better than TA"), ("TaLoS", "TaLoS negation beats TA")):
        c = compare(results, negation_target(fam), negation_target("TA"))
        row(claim, f"{fam} target acc − TA target acc (control rule met by both)", c, verdict(c, -1))
    c = compare(results, negation_target("LATA"), negation_target("TA-inst"))
    row("LATA forgetting beats TA", "LATA target acc − TA target acc on θ_inst", c, verdict(c, -1))
    return out


def premises(results: list[dict], smol: dict | None) -> dict[str, Any]:
    cos = [v for r in results for v in r["premises"]["cosines"].values()]
    gap = [r["premises"]["quadratic_gap"][t]["max_rel_error"] for r in results for t in r["tasks"]]
    over = [(v["overlap"], v["random_per_tensor"]) for r in results for v in r["premises"]["talos_overlap"].values()]
    out = {"cosine_mean": statistics.mean(cos), "cosine_max": max(cos, key=abs), "quadratic_gap_max_rel_error": gap,
           "encoder_mask_overlap": statistics.mean(o for o, _ in over),
           "encoder_random_overlap": statistics.mean(x for _, x in over)}
    if smol:
        out["smollm2_mask_overlap"] = statistics.mean(v["overlap"] for v in smol["across_tasks"].values())
        out["smollm2_random_overlap"] = statistics.mean(v["random_per_tensor"] for v in smol["across_tasks"].values())
        if smol["across_seeds"]:
            out["smollm2_same_task_overlap"] = statistics.mean(v["overlap"] for v in smol["across_seeds"].values())
    return out


def grid_edges(results: list[dict]) -> dict[str, Any]:
    """Where the validation choices fell on their grids: each family's chosen λ (addition: one a seed;
    negation: one a seed and task) with how many sat at the grid's top, and each expert's chosen lr
    against its grid's ends. A choice at an end means the grid may have cut the optimum off."""
    def summary(values: list[float], top: float) -> dict[str, Any]:
        return {"chosen": values, "grid_top": top, "at_top": sum(v >= top for v in values)}

    out: dict[str, Any] = {"addition": {}, "negation": {}, "lr": {}}
    for fam in results[0]["addition"]["chosen"]:
        grids = [[float(k) for k in r["addition"]["curves"][r["addition"]["chosen"][fam]["variant"]]] for r in results]
        if len(grids[0]) > 1:  # MetaGPT has no λ (one point)
            out["addition"][fam] = summary([r["addition"]["chosen"][fam]["lambda"] for r in results],
                                           max(max(g) for g in grids))
    for fam in results[0]["negation"][results[0]["tasks"][0]]["chosen"]:
        chosen = [r["negation"][t]["chosen"][fam] for r in results for t in r["tasks"]]
        top = max(float(k) for r in results for t in r["tasks"] for k in r["negation"][t]["curves"][
            r["negation"][t]["chosen"][fam]["variant"]])
        out["negation"][fam] = {**summary([c["lambda"] for c in chosen], top),
                                "control_rule_met": sum(c["control_rule_met"] for c in chosen)}
    for name in results[0]["experts"]:
        tried = [sorted(float(k) for k in r["experts"][name]["tried"]) for r in results]
        lrs = [r["experts"][name]["lr"] for r in results]
        if len(tried[0]) > 1:
            out["lr"][name] = {"chosen": lrs, "grid": tried[0], "at_top": sum(lr >= t[-1] for lr, t in zip(lrs, tried)),
                               "at_bottom": sum(lr <= t[0] for lr, t in zip(lrs, tried))}
    return out


def plots(results: list[dict], smol: dict | None, out: Path) -> None:
    curves = {}
    for fam in results[0]["addition"]["chosen"]:
        per_seed = [r["addition"]["curves"][r["addition"]["chosen"][fam]["variant"]] for r in results]
        if len(per_seed[0]) > 1:  # MetaGPT has no λ (one point)
            curves[fam] = [(float(k), statistics.mean(c[k] for c in per_seed)) for k in per_seed[0]]
    plot_sweep(curves, out / "claims_lambda.png", ylabel="validation mean normalized acc",
               title=f"Addition, MiniLM encoder ({len(results)} seeds)")
    weights = {f"{name} / model {model}": {int(k): v for k, v in w.items()}
               for name, per_model in (results[0]["addition"].get("lata_weights") or {}).items()
               for model, w in (per_model or {}).items()}
    if weights:
        plot_layer_heatmap(weights, out / "claims_lata_weights.png", f"LATA layer weights (seed {results[0]['seed']})")
    masks = [(f"MiniLM {pair} s{r['seed']}", v) for r in results for pair, v in r["premises"]["talos_overlap"].items()]
    masks += [(f"SmolLM2 {key.replace('/seed', ' s')}", v) for key, v in (smol or {}).get("across_tasks", {}).items()]
    plot_bars({"TaLoS masks (Jaccard)": {label: v["overlap"] for label, v in masks},
               "random masks, same per-tensor density": {label: v["random_per_tensor"] for label, v in masks}},
              out / "claims_mask_overlap.png", "overlap", "TaLoS premise: masks shared across tasks?")


def table(report: dict[str, Any]) -> str:
    """The verdict rows as a markdown table."""
    lines = ["| claim | comparison | n | seeds | Δ [95% CI] | p | verdict | note |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['comparison']} | {r['n']} | {r['seeds']} | {r['diff']:+.3f} "
              f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p']:.2g} | {r['verdict']} | {r['note']} |" for r in report["rows"]]
    return "\n".join(lines)


def metric_key(claim: str) -> str:
    """An MLflow metric name for a claim: its ASCII words joined by ``_`` (MLflow allows few characters)."""
    return "_".join(re.findall(r"[A-Za-z0-9.\-]+", claim))


EXPERIMENT = "mergeline-claims"


def log_to_mlflow(report: dict[str, Any], results: list[dict], files: list[Path], uri: str | None) -> str:
    """One run of experiment ``mergeline-claims`` with the rows as metrics and the files as artifacts."""
    tracking.configure_tracking(uri, EXPERIMENT)
    with mlflow.start_run(run_name="encoder-claims") as run:
        tracking.log_params({"family": "MiniLM-L6 encoder", "seeds": [r["seed"] for r in results]})
        tracking.log_metrics({metric_key(r["claim"]): {k: r[k] for k in ("diff", "low", "high", "p")}
                              for r in report["rows"]})
        for f in files:
            tracking.log_artifacts(f, "plots" if f.suffix == ".png" else None)
        tracking.describe_run(table(report))
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="docs/results/claims")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    if not results:
        print(f"error: {folder}: no seed*.json", file=sys.stderr)
        return 2
    if not args.no_mlflow:
        try:  # a store that cannot be opened fails here, before the bootstrap's minute of work
            tracking.configure_tracking(args.tracking_uri, EXPERIMENT)
        except MergelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    smol_path = folder / "premise_talos.json"
    smol = json.loads(smol_path.read_text()) if smol_path.is_file() else None
    report = {"rows": rows(results, smol), "premises": premises(results, smol), "grid_edges": grid_edges(results)}
    with atomic_file(folder / "claims.json") as handle:
        handle.write(json.dumps(report, indent=1))
    plots(results, smol, Path(args.out))
    print(table(report))
    print(json.dumps(report["premises"], indent=1))
    print(json.dumps(report["grid_edges"]))
    if not args.no_mlflow:
        files = [folder / "claims.json"] + sorted(Path(args.out).glob("claims_*.png"))
        print(f"MLflow run {log_to_mlflow(report, results, files, args.tracking_uri)} (experiment {EXPERIMENT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
