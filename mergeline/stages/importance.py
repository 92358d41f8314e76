"""Stage ``compute-importance``: STA Taylor scores and RegMean Gram matrices per task, plus vector diagnostics
and plots."""

from __future__ import annotations

from mergeline.pipeline.records import BaseRecord, Checkpoint, DataRecord, Diagnostics, Importance, Vector
from mergeline.stages.common import StageContext, rel, timed, write_json

GRAM_DIR = "_gram"  # work_dir/importance/_gram/<task>/gram.safetensors (beside the tasks' STA folders)


def compute_importance(ctx: StageContext, task: str, base: BaseRecord, checkpoint: Checkpoint, vector: Vector,
                       data: DataRecord) -> Importance:
    """STA importance I = |∇L(θ_ft) ⊙ τ| on the task's validation examples (METHODS.md §3)."""
    from mergeline.importance import StaImportanceConfig, importance_stats, save_importance, sta_importance
    from mergeline.io.atomic import atomic_dir
    from mergeline.io.hashing import sha256_file
    from mergeline.plots import plot_importance_histograms

    p = ctx.params
    out = ctx.work / "importance" / task
    cfg = StaImportanceConfig(**p.importance.model_dump(), max_length=p.finetune.max_length,
                              batch_size=p.finetune.batch_size)
    ctx.used({"task": task, **cfg.model_dump()})
    ctx.say(f"compute-importance: {task}")
    with timed() as clock:
        scores = sta_importance(ctx.root / checkpoint.path, ctx.root / base.path,
                                ctx.root / data.split(task, "validation").path, cfg, device=ctx.device,
                                log=ctx.log, progress=ctx.progress)
        with atomic_dir(out, kind="importance") as tmp:
            save_importance(scores, tmp / "sta.safetensors")
            stats = importance_stats(scores)
            write_json(tmp / "stats.json", stats)
            plot_importance_histograms(scores, tmp / "importance_histogram.png")
    return Importance(task=task, kind="sta_taylor", path=rel(out / "sta.safetensors", ctx.root),
                      sha256=sha256_file(out / "sta.safetensors"), plot=rel(out / "importance_histogram.png", ctx.root),
                      config=cfg.model_dump(), seconds=clock.seconds)


def compute_gram(ctx: StageContext, task: str, checkpoint: Checkpoint, data: DataRecord) -> Importance:
    """RegMean's Gram matrices XᵀX of every linear layer's inputs under the task's fine-tune, on the first
    ``importance.calib_examples`` training records (the data it was fine-tuned on, as the authors do)."""
    from mergeline.importance import GramConfig, gram_matrices, save_grams
    from mergeline.io.atomic import atomic_dir
    from mergeline.io.hashing import sha256_file

    p = ctx.params
    out = ctx.work / "importance" / GRAM_DIR / task
    cfg = GramConfig(calib_examples=p.importance.calib_examples, max_length=p.finetune.max_length,
                     batch_size=p.finetune.batch_size)
    split = "train" if "train" in data.tasks[task] else "validation"
    ctx.used({"task": task, "split": split, **cfg.model_dump()})
    ctx.say(f"compute-gram: {task}")
    with timed() as clock:
        grams = gram_matrices(ctx.root / checkpoint.path, ctx.root / data.split(task, split).path, cfg,
                              device=ctx.device, progress=ctx.progress)
        with atomic_dir(out, kind="importance") as tmp:
            save_grams(grams, tmp / "gram.safetensors")
    return Importance(task=task, kind="regmean_gram", path=rel(out / "gram.safetensors", ctx.root),
                      sha256=sha256_file(out / "gram.safetensors"), plot="", config={"split": split, **cfg.model_dump()},
                      seconds=clock.seconds)


def vector_diagnostics(ctx: StageContext, vectors: dict[str, Vector]) -> Diagnostics:
    """MetaGPT norms and per-layer cosines between task vectors (LATA-style layer view), with a heat map."""
    from mergeline.importance import layer_similarities, vector_norms
    from mergeline.plots import plot_layer_heatmap

    out = ctx.work / "importance" / "_vectors"
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(vectors)
    files = {n: ctx.root / vectors[n].path / "task_vector.safetensors" for n in names}
    norms = {n: vector_norms(files[n], "model") for n in names}
    heat: dict[str, dict[int, float]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            heat[f"{a} vs {b}"] = layer_similarities(files[a], files[b])
    plot = out / "layer_cosine_heatmap.png"
    if heat:
        plot_layer_heatmap(heat, plot, "per-layer cosine between task vectors")
        ctx.artifact(plot, "plots")
    summary = {"norms": norms, "layer_cosines": {k: {str(l): v for l, v in d.items()} for k, d in heat.items()}}
    write_json(out / "diagnostics.json", summary)
    return Diagnostics(path=rel(out, ctx.root), summary=summary, plot=rel(plot, ctx.root) if heat else None)
