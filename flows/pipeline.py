"""The experiment flow: fine-tune → extract-vector → compute-importance → merge → evaluate → register.

One Prefect flow run is one experiment and one MLflow parent run; each stage is a nested MLflow run.
Run it with ``mergeline run [--params FILE] [--set key=value ...]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.report import results_table
from mergeline.data.tasks import source_hashes
from mergeline.params import load_params
from mergeline.stages.common import StageContext, resolve_device
from mergeline.stages.evaluate import evaluate_experiment, registered_variants, write_metrics
from mergeline.stages.merge import merge_config, plan_variants, prune_merged, write_merge_index
from mergeline.stages.train import checkpoint_name
from tasks import evaluate as evaluate_tasks
from tasks import finetune as finetune_tasks
from tasks import importance as importance_tasks
from tasks import merge as merge_tasks
from tasks import prepare as prepare_tasks
from tasks._results import PERSIST
from tasks._stage import RunHandle, expected_output_missing
from tasks.assets import materializing, results_artifact


def _call(task_fn: Any, outputs: list[str], run: RunHandle, *args: Any, assets: list[str] | None = None
          ) -> dict[str, Any]:
    """Run a task, refreshing its cache when the outputs a cached record points at are gone; it
    materializes ``assets`` (default: ``outputs``) from what its arguments name (tasks/assets.py)."""
    fn = task_fn.with_options(refresh_cache=True) if expected_output_missing(run, *outputs) else task_fn
    params = args[0]
    fn = materializing(fn, params["experiment"], outputs if assets is None else assets, args[1:],
                       group=[params["data_dir"]])
    return fn(*args, run=run)


STAGES = ("prepare-data", "import-base", "fine-tune", "extract-vector", "compute-importance", "merge", "evaluate",
          "register")


def run_stages(params: dict[str, Any], run: RunHandle, fanout: Any = None, until: str = "evaluate"
               ) -> dict[str, Any]:
    """Stages up to ``until`` (default: evaluation); returns every record (the lineage is built from them).

    ``mergeline stage NAME`` (what dvc.yaml calls) is this with ``until=NAME``: earlier stages are
    cache hits, so DVC and Prefect share one definition of the pipeline.

    ``fanout`` (see flows/fanout.py) runs the fine-tunes as separate flow runs on a work pool;
    without it they run in this process, one after the other.
    """
    ctx = StageContext(load_params_from_dict(params), Path(run.root), run.device)
    p = ctx.params
    stop_after = STAGES.index(until)
    records: dict[str, Any] = {}
    sources = source_hashes(p.task_entries, ctx.root)
    records["data"] = data = _call(prepare_tasks.prepare_data, [p.data_dir], run, params, sources)
    if stop_after == 0:
        return records
    records["base"] = base = _call(prepare_tasks.import_base, [f"{p.work_dir}/base"], run, params)
    if stop_after == 1:
        return records

    modes = ["full"] + (["talos"] if p.talos.enabled else []) + (["lora"] if p.lora.enabled else [])
    trained = [e.name for e in p.task_entries if e.source == "finetune"]
    jobs = [(task, mode) for task in trained for mode in modes]
    if fanout is not None:
        checkpoints = fanout.finetune_all(params, jobs, base, data)
    else:
        checkpoints = {
            f"{task}:{mode}": _call(finetune_tasks.finetune, [f"{p.work_dir}/checkpoints/{checkpoint_name(task, mode)}"],
                                    run, params, task, mode, base, data)
            for task, mode in jobs
        }
    checkpoints.update(_given_models(ctx, run, params, base, modes))
    records["checkpoints"] = checkpoints
    if stop_after == 2:
        return records
    vectors: dict[str, Any] = {}
    for key, ck in checkpoints.items():
        # a given model stands for its task in every mode: one vector, listed under each
        same = next((vectors[k] for k, other in checkpoints.items() if other is ck and k in vectors), None)
        vectors[key] = same or _call(finetune_tasks.extract_vector,
                                     [f"{p.work_dir}/vectors/{checkpoint_name(ck['task'], ck['mode'])}"], run, params, base, ck)
    records["vectors"] = vectors
    if stop_after == 3:
        return records
    importance: dict[str, dict[str, Any]] = {}
    if "sta" in p.merge.methods:
        importance = {t: _call(importance_tasks.compute_importance, [f"{p.work_dir}/importance/{t}/sta.safetensors"],
                               run, params, t, base, checkpoints[f"{t}:full"], vectors[f"{t}:full"], data)
                      for t in p.task_names}
    diagnostics = _call(importance_tasks.vector_diagnostics, [], run, params,
                        {k.replace(":", "-"): v for k, v in vectors.items()})
    records.update(importance=importance, diagnostics=diagnostics)
    if stop_after == 4:
        return records

    variants = {v["name"]: v for v in plan_variants(ctx)}
    configs = {name: merge_config(ctx, v, base, vectors, importance) for name, v in variants.items()}
    # No output check: a pruned variant folder is a cache of merged.json, rebuilt where it is needed.
    merged = {name: _call(merge_tasks.merge_variant, [], run, params, v, configs[name],
                          assets=[f"{p.work_dir}/merged/{name}"])
              for name, v in variants.items()}
    write_merge_index(ctx, merged)
    records.update(variants=variants, configs=configs, merged=merged)
    if stop_after == 5:
        return records

    def ev(name: str, model: dict[str, Any], split: str, sets: list[str]) -> dict[str, Any]:
        return evaluate_tasks.evaluate(params, name, model, split, data, run=run, sets=sets)

    records.update(evaluate_experiment(ctx, base, checkpoints, merged, variants, ev))
    write_metrics(ctx, records)
    prune_merged(ctx, merged, registered_variants(ctx, records))
    return records


def _given_models(ctx: StageContext, run: RunHandle, params: dict[str, Any], base: dict[str, Any],
                  modes: list[str]) -> dict[str, dict[str, Any]]:
    """Records of the tasks given as a checkpoint or an adapter (not fine-tuned), one per mode."""
    from mergeline.io.hashing import sha256_dir
    from mergeline.stages.train import given_model

    given: dict[str, dict[str, Any]] = {}
    for entry in ctx.params.task_entries:
        if entry.source == "finetune":
            continue
        outputs = [f"{ctx.params.work_dir}/checkpoints/{entry.name}"] if entry.source == "adapter" else []
        record = _call(finetune_tasks.import_task_model, outputs, run, params, entry.name, base,
                       sha256_dir(given_model(ctx, entry.name)))
        given.update({f"{entry.name}:{mode}": record for mode in modes})
    return given


def load_params_from_dict(params: dict[str, Any]):  # type: ignore[no-untyped-def]
    from mergeline.params import ExperimentParams

    return ExperimentParams.model_validate(params)


@flow(name="mergeline-pipeline", log_prints=True, **PERSIST)  # sweeps read it back
def pipeline(params_file: str = "params/default.yaml", overrides: list[str] | None = None,
             root: str | None = None, until: str = "register") -> dict[str, Any]:
    """One experiment. Parameters are validated before any work starts (bad input: exit 2)."""
    from flows.register import finish_experiment
    from flows.fanout import fanout_from_env
    from flows.experiment_run import start_experiment_run
    from mergeline.tracking import configure_tracking

    params = load_params(params_file, overrides)
    root_path = Path(root or os.getcwd())
    device = resolve_device(params.device)
    logger = get_run_logger()
    logger.info(f"experiment {params.experiment}: tasks={params.task_names} methods={list(params.merge.methods)} "
                f"device={device}")
    configure_tracking(experiment=params.experiment)
    as_dict = params.model_dump(mode="json", by_alias=True)
    with start_experiment_run(params, params_file, root_path) as parent:
        run = RunHandle(str(root_path), device, parent.info.run_id)
        records = run_stages(as_dict, run, fanout_from_env(run), until=min(until, "evaluate", key=STAGES.index))
        if until != "register":
            return {"stage": until, "records": records}
        summary = finish_experiment(params, params_file, records, run)
    summary["table"] = results_table(params, records)
    results_artifact(params.experiment, summary["table"])
    logger.info("results\n" + summary["table"])
    return summary
