"""Stage ``merge``: expand each method's sweep into variants and merge each one with the library."""

from __future__ import annotations

import itertools
from typing import Any

from mergeline.io.outputs import replace_problem
from mergeline.params import PIPELINE_METHODS, vector_mode
from mergeline.stages.common import StageContext, rel, timed, write_json

_SHORT = {"task_arithmetic": "ta", "ties": "ties", "dare_ties": "dare", "sta": "sta", "metagpt": "metagpt",
          "talos": "talos", "lata": "lata", "lora": "lora"}


def plan_variants(ctx: StageContext) -> list[dict[str, Any]]:
    """Every (method, λ, density) point to merge; ``merge.lambda`` pins λ for all methods."""
    variants = []
    for method, sweep in ctx.params.merge.methods.items():
        for lam, density in itertools.product(*ctx.params.sweep_grid(method)):
            name = f"{_SHORT[method]}_l{lam:g}" + (f"_d{density:g}" if density is not None else "")
            variants.append({"name": name, "method": method, "lambda": lam, "density": density,
                             "options": sweep.options})
    return variants


def merge_config(ctx: StageContext, variant: dict[str, Any], base: dict[str, Any],
                 vectors: dict[str, dict[str, Any]], importance: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mergekit-schema config of one variant (recorded verbatim in lineage and MLflow)."""
    method = variant["method"]
    mode = vector_mode(method)
    models = []
    for task in ctx.params.task_names:
        # MetaGPT's coefficients are closed-form: it takes no per-model weight.
        per_model: dict[str, Any] = {} if method == "metagpt" else {"weight": 1.0}
        if variant["density"] is not None:
            per_model["density"] = variant["density"]
        if method == "sta":
            per_model["importance"] = importance[task]["path"]
        models.append({"model": vectors[f"{task}:{mode}"]["path"], "parameters": per_model})
    parameters: dict[str, Any] = dict(variant["options"])
    if method != "metagpt":
        parameters["lambda"] = variant["lambda"]
    if method == "dare_ties":
        parameters.setdefault("seed", ctx.params.merge.seed)
    return {"merge_method": PIPELINE_METHODS[method], "base_model": base["path"], "models": models,
            "parameters": parameters, "dtype": "float32"}


def merge_variant(ctx: StageContext, variant: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Run one merge into ``work_dir/merged/<variant>`` (atomic; paths in config are root-relative)."""
    from mergeline.merge.config import MergeConfig
    from mergeline.merge.engine import run_merge

    out = ctx.work / "merged" / variant["name"]
    ctx.say(f"merge: {variant['name']}")
    absolute = _absolutize(config, ctx)
    record: dict[str, Any] = {"variant": variant, "config": config}
    with timed(record):
        result = run_merge(MergeConfig.model_validate(absolute), out, device=ctx.device, progress=ctx.progress)
    record.update({"path": rel(out, ctx.root), "weights": result.weight_sha256, "report": result.report})
    return record


def ensure_merged(ctx: StageContext, record: dict[str, Any]) -> None:
    """Rebuild a variant's folder from its config when it was pruned and its weights are needed again.

    A merge is a pure function of its config and hashed inputs, so a pruned variant costs one merge to
    get back; the rebuilt weights must equal the recorded sha256, else the inputs changed under it.
    """
    out = ctx.root / record["path"]
    if all((out / name).is_file() for name in record["weights"]):
        return
    ctx.say(f"merge: rebuilding pruned variant {record['variant']['name']}")
    rebuilt = merge_variant(ctx, record["variant"], record["config"])
    if rebuilt["weights"] != record["weights"]:
        raise RuntimeError(f"{out}: rebuilt weights differ from the recorded merge (inputs changed since)")


def write_merge_index(ctx: StageContext, merged: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``work_dir/merged.json``: every variant as its config and weight sha256 (the merge stage's DVC out).

    The variant folders under ``merged/`` are a cache of it (pruned after scoring, rebuilt on demand).
    """
    index = {name: {"config": rec["config"], "weights": rec["weights"], "path": rec["path"]}
             for name, rec in sorted(merged.items())}
    write_json(ctx.work / "merged.json", index)
    return index


def prune_merged(ctx: StageContext, merged: dict[str, dict[str, Any]], keep: list[str]) -> list[str]:
    """Delete the folders of scored variants not in ``keep`` (``registry.keep_merged: all`` keeps all).

    Only a folder that is still the merge mergeline wrote is deleted (``replace_problem``, as for any
    replace); one holding anything else is kept, with a line saying why."""
    import shutil

    if ctx.params.registry.keep_merged == "all":
        return []
    pruned = []
    for name, rec in sorted(merged.items()):
        folder = ctx.root / rec["path"]
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


def _absolutize(config: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    fixed = dict(config, base_model=str(ctx.root / config["base_model"]))
    fixed["models"] = []
    for entry in config["models"]:
        params = dict(entry["parameters"])
        if "importance" in params:
            params["importance"] = str(ctx.root / params["importance"])
        fixed["models"].append({"model": str(ctx.root / entry["model"]), "parameters": params})
    return fixed
