"""The descriptions (Markdown) the MLflow UI shows on a registered model and on each of its versions."""

from __future__ import annotations

import json
from typing import Any

from mergeline.lineage.record import Lineage


def merged_params(lineage: Lineage) -> dict[str, Any]:
    """The merge as params of its logged model: method, every coefficient, sparsity, base, tasks."""
    merge = lineage.merge
    params: dict[str, Any] = {"method": merge.method, "base_model": lineage.base_model.id,
                              "tasks": ",".join(t.name for t in lineage.tasks),
                              "sparsity": "none" if merge.sparsity is None else json.dumps(merge.sparsity)}
    params.update({f"coefficient.{key}": value for key, value in merge.coefficients.items()})
    if merge.seed is not None:
        params["seed"] = merge.seed
    return params


def merged_label(lineage: Lineage) -> str:
    """A logged model's name for the merge: method and λ (e.g. ``ties-lambda1.0-sparsity0.8``)."""
    merge = lineage.merge
    parts = [merge.method.replace("_", "-")]
    if "lambda" in merge.coefficients:
        parts.append(f"lambda{merge.coefficients['lambda']:g}")
    if isinstance(merge.sparsity, float):
        parts.append(f"sparsity{merge.sparsity:g}")
    return "-".join(parts)


def _table(rows: dict[str, float]) -> list[str]:
    keys = sorted(rows)
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            "| " + " | ".join(f"{rows[k]:.4g}" for k in keys) + " |"]


def version_description(lineage: Lineage, name: str) -> str:
    """Method, coefficients, sparsity and the results row of one registered merge."""
    merge = lineage.merge
    tasks = ", ".join(f"`{t.name}`" for t in lineage.tasks)
    lines = [f"**{merge.method}** merge of the task vectors of {tasks} into base `{lineage.base_model.id}`.", "",
             "Coefficients: " + (", ".join(f"{k} = {v:g}" for k, v in sorted(merge.coefficients.items())) or "none")
             + ".",
             "Sparsity (fraction of task-vector entries dropped): "
             + ("none" if merge.sparsity is None else json.dumps(merge.sparsity)) + "."]
    for split in ("test", "validation"):
        row = {k.split("/", 1)[1]: v for k, v in lineage.evaluation.items() if k.startswith(f"{split}/")}
        if row:
            lines += ["", f"Results on {split}:", "", *_table(row)]
    lines += ["", "Provenance: `lineage.json` beside the weights; check it with "
              f"`mergeline lineage {name}@<version> --verify`."]
    return "\n".join(lines)


def model_description(name: str, lineage: Lineage, champion_alias: str = "champion") -> str:
    """What the registered model is and how to load and check it."""
    tasks = ", ".join(f"`{t.name}`" for t in lineage.tasks)
    return "\n".join([
        f"Merged models built by mergeline from base `{lineage.base_model.id}` and the task vectors of {tasks}.",
        "Each version is one merge: its method, coefficients, sparsity and results are in its description and "
        "tags, its full provenance in `lineage.json` beside the weights. The alias "
        f"`@{champion_alias}` is the best variant on validation.", "",
        "Load it with MLflow (a transformers text-generation pipeline):", "",
        f'    mlflow.transformers.load_model("models:/{name}@{champion_alias}")', "",
        f"Check every hash it was built from: `mergeline lineage {name}@{champion_alias} --verify`.",
    ])


__all__ = ["merged_label", "merged_params", "model_description", "version_description"]
