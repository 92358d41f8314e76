"""Each stage's plan: which calls it makes, from the params and the records of earlier stages.

Every plan hands all of its independent calls to the executor at once (the fine-tunes, the merges,
a round of evaluations), so an executor that overlaps calls overlaps them all.
"""

from __future__ import annotations

from mergeline.data.tasks import source_hashes
from mergeline.io.hashing import sha256_dir
from mergeline.params import ExperimentParams
from mergeline.pipeline.records import Evaluation, Experiment, Fit, Merged
from mergeline.pipeline.steps import Call, Executor, Stage
from mergeline.stages.common import StageContext
from mergeline.stages.importance import GRAM_DIR
from mergeline.stages.evaluate import Scoring, evaluate_experiment, registered_variants, write_metrics
from mergeline.stages.merge import merge_config, plan_variants, prune_merged, write_merge_index
from mergeline.stages.train import given_model


def modes(p: ExperimentParams) -> list[str]:
    """The fine-tunes each task gets: full, plus TaLoS and LoRA when enabled."""
    return ["full"] + (["talos"] if p.talos.enabled else []) + (["lora"] if p.lora.enabled else [])


def fits(p: ExperimentParams) -> list[Fit]:
    """Every fine-tune of the experiment (tasks given as a model are not fine-tuned)."""
    return [Fit(e.name, mode) for e in p.task_entries if e.source == "finetune" for mode in modes(p)]


def prepare_data(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    sources = source_hashes(ctx.params.task_entries, ctx.root)
    (data,) = run.run([Call(stage.step("prepare-data"), "all", (sources,), outputs=(ctx.params.data_dir,))])
    return exp.add(data=data)


def import_base(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    p = ctx.params
    (base,) = run.run([Call(stage.step("import-base"), p.base_model, (), outputs=(f"{p.work_dir}/base",))])
    return exp.add(base=base)


def fine_tune(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    """Every fine-tune, and the import of every task given as a checkpoint or an adapter, at once."""
    p = ctx.params
    trained = fits(p)
    calls = [Call(stage.step("fine-tune"), fit.label, (fit, exp.base, exp.data),
                  outputs=(f"{p.work_dir}/checkpoints/{fit.name}",), pooled=True) for fit in trained]
    given = [e for e in p.task_entries if e.source != "finetune"]
    calls += [Call(stage.step("import-task-model"), e.name, (e.name, exp.base, sha256_dir(given_model(ctx, e.name))),
                   outputs=(f"{p.work_dir}/checkpoints/{e.name}",) if e.source == "adapter" else ())
              for e in given]
    records = run.run(calls)
    checkpoints = dict(zip(trained, records))
    # a given model stands for its task in every mode
    for entry, record in zip(given, records[len(trained):]):
        checkpoints.update({Fit(entry.name, mode): record for mode in modes(p)})
    return exp.add(checkpoints=checkpoints)


def extract_vector(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    """One vector per checkpoint (a given model's, listed under each mode, is extracted once)."""
    first: dict[str, Fit] = {}
    for fit, ck in exp.checkpoints.items():
        first.setdefault(ck.path, fit)
    unique = list(first.values())
    records = run.run([Call(stage.step("extract-vector"), fit.label, (exp.base, exp.checkpoints[fit]),
                            outputs=(f"{ctx.params.work_dir}/vectors/{exp.checkpoints[fit].fit.name}",))
                       for fit in unique])
    by_path = {exp.checkpoints[fit].path: record for fit, record in zip(unique, records)}
    return exp.add(vectors={fit: by_path[ck.path] for fit, ck in exp.checkpoints.items()})


def compute_importance(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    """STA scores and RegMean Gram matrices per task (when a swept method needs them) and the vector
    diagnostics, at once."""
    p = ctx.params
    tasks = p.task_names if p.importance_needed else []
    gram_tasks = p.task_names if p.gram_needed else []
    calls = [Call(stage.step("compute-importance"), t,
                  (t, exp.base, exp.checkpoints[Fit(t, "full")], exp.vectors[Fit(t, "full")], exp.data),
                  outputs=(f"{p.work_dir}/importance/{t}/sta.safetensors",)) for t in tasks]
    calls += [Call(stage.step("compute-gram"), t, (t, exp.checkpoints[Fit(t, "full")], exp.data),
                   outputs=(f"{p.work_dir}/importance/{GRAM_DIR}/{t}/gram.safetensors",)) for t in gram_tasks]
    calls.append(Call(stage.step("vector-diagnostics"), "all", ({fit.label: v for fit, v in exp.vectors.items()},)))
    *records, diagnostics = run.run(calls)
    scores, grams = records[:len(tasks)], records[len(tasks):]
    return exp.add(importance=dict(zip(tasks, scores)), grams=dict(zip(gram_tasks, grams)), diagnostics=diagnostics)


def merge(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    """Every variant of every method's sweep; then ``merged.json``, the stage's DVC out.

    No output check on a cached merge: a pruned variant folder is a cache of merged.json, rebuilt
    where it is needed.
    """
    assert exp.base is not None
    variants = plan_variants(ctx)
    calls = [Call(stage.step("merge"), v.name,
                  (v, merge_config(ctx, v, exp.base, exp.vectors, exp.importance, exp.grams)))
             for v in variants]
    merged = {v.name: record for v, record in zip(variants, run.run(calls))}
    write_merge_index(ctx, merged)
    return exp.add(merged=merged)


def evaluate(stage: Stage, ctx: StageContext, exp: Experiment, run: Executor) -> Experiment:
    """The evaluation plan, each round's evaluations at once (variants' on the pool, when there is one);
    then the DVC metrics file, and the unregistered variant folders pruned."""
    assert exp.base is not None and exp.data is not None
    step = stage.step("evaluate")
    data = exp.data

    def score(requests: list[Scoring]) -> list[Evaluation]:
        return run.run([Call(step, f"{r.name}-{r.split}", (r.name, r.model, r.split, data, r.sets),
                             pooled=isinstance(r.model, Merged)) for r in requests])

    scores = evaluate_experiment(ctx, exp.base, exp.checkpoints, exp.merged, score)
    write_metrics(ctx, scores)
    prune_merged(ctx, exp.merged, registered_variants(ctx, scores))
    return exp.add(scores=scores)


__all__ = ["compute_importance", "evaluate", "extract_vector", "fine_tune", "fits", "import_base", "merge", "modes",
           "prepare_data"]
