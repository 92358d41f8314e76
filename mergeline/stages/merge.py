"""Stage ``merge``: expand each method's sweep (and the edits' grids) into variants and merge each one."""

from __future__ import annotations

from typing import Any

from mergeline.io.outputs import replace_problem
from mergeline.methods import get_method, pipeline_method
from mergeline.parameters import config_keys
from mergeline.params import vector_mode
from mergeline.pipeline.edits import edit_variants, sweep_variants
from mergeline.pipeline.records import BaseRecord, Fit, Importance, Merged, Variant, Vector
from mergeline.stages.common import StageContext, rel, timed, write_json


def plan_variants(ctx: StageContext) -> list[Variant]:
    """Every (method, λ, density, grid) point to merge; ``merge.lambda`` pins λ for all methods that sweep it.
    Then the edits' points (negation, analogy: :mod:`mergeline.pipeline.edits`).

    A grid point's values join the variant's ``options`` (merge parameters, global or per-model default).
    """
    variants = [variant for method in ctx.params.merge.methods for variant in sweep_variants(ctx.params, method)]
    return variants + edit_variants(ctx.params)


def merge_config(ctx: StageContext, variant: Variant, base: BaseRecord, vectors: dict[Fit, Vector],
                 importance: dict[str, Importance], grams: dict[str, Importance] | None = None) -> dict[str, Any]:
    """The mergekit-schema config of one variant (recorded verbatim in lineage and MLflow).

    What goes in follows the method's class: ``weight: 1`` per model where it takes a weight (an edit's
    own weights, over its tasks only), ``lambda`` where it sweeps λ, each task's importance (or Gram
    matrices) where its pipeline entry needs them, the merge seed where it takes one.
    """
    method_cls, entry = pipeline_method(variant.method)
    mode = vector_mode(variant.method)
    takes_weight = "weight" in config_keys(method_cls.PerModel)
    weights = variant.weights or {task: 1.0 for task in ctx.params.task_names}
    models = []
    for task, weight in weights.items():
        per_model: dict[str, Any] = {"weight": weight} if takes_weight else {}
        if variant.density is not None:
            per_model["density"] = variant.density
        if entry.importance:
            per_model["importance"] = importance[task].path
        if entry.gram:
            per_model["gram"] = (grams or {})[task].path
        models.append({"model": vectors[Fit(task, mode)].path, "parameters": per_model})
    parameters: dict[str, Any] = dict(variant.options)
    if "lambda" in entry.sweeps:
        parameters["lambda"] = variant.lam
    if "seed" in config_keys(method_cls.Parameters):
        parameters.setdefault("seed", ctx.params.merge.seed)
    return {"merge_method": method_cls.name, "base_model": base.path, "models": models,
            "parameters": parameters, "dtype": "float32"}


def merge_variant(ctx: StageContext, variant: Variant, config: dict[str, Any]) -> Merged:
    """Run one merge into ``work_dir/merged/<variant>`` (atomic; paths in config are root-relative)."""
    from mergeline.merge.config import MergeConfig
    from mergeline.merge.engine import run_merge

    out = ctx.work / "merged" / variant.name
    ctx.used({"method": variant.method, "lambda": variant.lam, "density": variant.density,
              **{f"option.{k}": v for k, v in variant.options.items()}})
    ctx.say(f"merge: {variant.name}")
    absolute = absolute_config(config, ctx)
    with timed() as clock:
        result = run_merge(MergeConfig.model_validate(absolute), out, device=ctx.device, progress=ctx.progress)
    return Merged(variant=variant, config=config, path=rel(out, ctx.root), weights=result.weight_sha256,
                  report=result.report, seconds=clock.seconds)


def ensure_merged(ctx: StageContext, record: Merged) -> None:
    """Rebuild a variant's folder from its config when it was pruned and its weights are needed again.

    A merge is a pure function of its config and hashed inputs, so a pruned variant costs one merge to
    get back; the rebuilt weights must equal the recorded sha256, else the inputs changed under it.
    """
    out = ctx.root / record.path
    if all((out / name).is_file() for name in record.weights):
        return
    ctx.say(f"merge: rebuilding pruned variant {record.variant.name}")
    rebuilt = merge_variant(ctx, record.variant, record.config)
    if rebuilt.weights != record.weights:
        raise RuntimeError(f"{out}: rebuilt weights differ from the recorded merge (inputs changed since)")


def write_merge_index(ctx: StageContext, merged: dict[str, Merged]) -> dict[str, Any]:
    """``work_dir/merged.json``: every variant as its config and weight sha256 (the merge stage's DVC out).

    The variant folders under ``merged/`` are a cache of it (pruned after scoring, rebuilt on demand).
    """
    index = {name: {"config": rec.config, "weights": rec.weights, "path": rec.path}
             for name, rec in sorted(merged.items())}
    write_json(ctx.work / "merged.json", index)
    return index


def prune_merged(ctx: StageContext, merged: dict[str, Merged], keep: list[str]) -> list[str]:
    """Delete the folders of scored variants not in ``keep`` (``registry.keep_merged: all`` keeps all).

    Only a folder that is still the merge mergeline wrote is deleted (``replace_problem``, as for any
    replace); one holding anything else is kept, with a line saying why."""
    import shutil

    if ctx.params.registry.keep_merged == "all":
        return []
    pruned = []
    for name, rec in sorted(merged.items()):
        folder = ctx.root / rec.path
        if name not in keep and folder.is_dir():
            problem = replace_problem(folder, "merge", overwrite=True)
            if problem is not None:
                ctx.say(f"merge: not pruning {name}: {problem}")
                continue
            shutil.rmtree(folder)
            pruned.append(name)
    if pruned:
        ctx.say(f"merge: pruned {len(pruned)} unselected variant folder(s) (rebuilt from merged.json on demand)")
    return pruned


def absolute_config(config: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """The config with its model paths against the project root (a recorded config keeps them relative):
    the base, each model, its importance, and the method's global model inputs (LATA's pretrained_model)."""
    fixed = dict(config, base_model=str(ctx.root / config["base_model"]))
    parameters = dict(config["parameters"])
    for key in get_method(config["merge_method"]).global_inputs:
        if isinstance(parameters.get(key), str):
            parameters[key] = str(ctx.root / parameters[key])
    fixed["parameters"] = parameters
    fixed["models"] = []
    files = get_method(config["merge_method"]).model_inputs  # per-model parameters that name files
    for entry in config["models"]:
        params = dict(entry["parameters"])
        for key in files:
            if key in params:
                params[key] = str(ctx.root / params[key])
        fixed["models"].append({"model": str(ctx.root / entry["model"]), "parameters": params})
    return fixed
