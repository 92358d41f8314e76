"""Steps the quality experiments share: merge-then-evaluate one variant through the pipeline's Prefect
tasks (same caching, same MLflow nesting), extra datasets in the pipeline's data-record shape, chance.

Every merge and evaluation goes through ``tasks.merge.merge_variant`` and ``tasks.evaluate.evaluate``,
so an unchanged re-run is a cache hit. With ``prune`` a merged model is deleted once evaluated; a
later re-run then merges it again (the cache is refreshed when its output is gone).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from flows.pipeline import _call as call_stage
from mergeline.data.records import dump_records, load_records
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_file
from mergeline.params import ExperimentParams
from mergeline.stages.common import StageContext, rel
from tasks import evaluate as evaluate_tasks
from tasks import merge as merge_tasks
from tasks._stage import RunHandle

__all__ = ["call_stage", "context", "merge_variant", "evaluate", "merge_and_evaluate", "prune", "write_dataset",
           "chance", "variant", "own_accuracies"]


def context(params: dict[str, Any], run: RunHandle) -> StageContext:
    return StageContext(ExperimentParams.model_validate(params), Path(run.root), run.device)


def variant(name: str, method: str, lam: float, density: float | None = None,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A variant record in the shape ``mergeline.stages.merge.plan_variants`` makes."""
    return {"name": name, "method": method, "lambda": lam, "density": density, "options": dict(options or {})}


def merge_variant(params: dict[str, Any], run: RunHandle, spec: dict[str, Any], config: dict[str, Any]
                  ) -> dict[str, Any]:
    out = f"{params['work_dir']}/merged/{spec['name']}"
    return call_stage(merge_tasks.merge_variant, [out], run, params, spec, config)


def evaluate(params: dict[str, Any], run: RunHandle, name: str, model: dict[str, Any], split: str,
             data: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of ``model`` on ``split`` of ``params['tasks']`` and the control set."""
    return evaluate_tasks.evaluate(params, name, model, split, data, run=run)


def merge_and_evaluate(params: dict[str, Any], run: RunHandle, spec: dict[str, Any], config: dict[str, Any],
                       split: str, data: dict[str, Any], prune_after: bool) -> dict[str, Any]:
    """Merge ``spec`` and score it on ``split``; returns the evaluation record (plus the merge report)."""
    merged = merge_variant(params, run, spec, config)
    evaluation = dict(evaluate(params, run, spec["name"], merged, split, data))
    evaluation["merge"] = {"seconds": merged.get("seconds"), "report": merged.get("report") or {}}
    if prune_after:
        prune(run, merged)
    return evaluation


def prune(run: RunHandle, record: dict[str, Any]) -> None:
    """Delete a merged model folder (only ever one under a work_dir's ``merged/``)."""
    path = Path(run.root) / record["path"]
    if path.parent.name == "merged" and path.is_dir():
        shutil.rmtree(path)


def write_dataset(root: Path, data_dir: str, name: str, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Write ``data_dir/<name>/<split>.jsonl`` atomically; return the data record entry of that task.

    The entry has the shape of ``prepare_data``'s (``{split: {"path", "sha256"}}``), so the pipeline's
    fine-tune and evaluate stages read it like any packaged task. Files are re-validated on read.
    """
    folder = root / data_dir / name
    with atomic_dir(folder) as tmp:
        for split, records in splits.items():
            (tmp / f"{split}.jsonl").write_bytes(dump_records(records))
        (tmp / "meta.json").write_text(json.dumps({"task": name, "counts": {s: len(r) for s, r in splits.items()}}))
    entry = {}
    for split in splits:
        path = folder / f"{split}.jsonl"
        load_records(path)
        entry[split] = {"path": rel(path, root), "sha256": sha256_file(path)}
    return entry


def chance(root: Path, data: dict[str, Any], task: str, split: str = "test") -> float:
    """Expected accuracy of uniform guessing on a split: mean of 1/len(choices)."""
    records = load_records(root / data["tasks"][task][split]["path"])
    return sum(1.0 / len(r["choices"]) for r in records) / len(records)


def own_accuracies(metrics: dict[str, dict[str, float]], control: str) -> dict[str, float]:
    """From ``{task: metrics of the model fine-tuned on task}``: each model's accuracy on its own task,
    and the mean control accuracy of those models (the row "single-task fine-tuned" of the tables)."""
    own = {task: m[task] for task, m in metrics.items()}
    own[control] = sum(m[control] for m in metrics.values()) / len(metrics)
    return own
