"""Steps the quality experiments share, behind one of two backends, plus extra datasets and chance.

Backends (``use_backend``; the experiments call only the functions of this module):

``PipelineBackend`` (default, ``quality.py`` without ``--direct``): every fine-tune, vector, merge and
evaluation is the pipeline's Prefect task of that step (``tasks.stages.TASKS``), so the same caching
and MLflow nesting as ``mergeline run``; an unchanged re-run is a cache hit.

``DirectBackend`` (``_quality_backend``, ``quality.py --direct``): the same library stage functions
(``mergeline.stages.*``) without Prefect or MLflow, executed in parallel worker processes by a
planner that re-runs the experiments' code until every step is computed. Steps whose results are
not computed yet return *pending* placeholders; ``block``/``decide`` keep a choice (the best λ, the
negation point) from ever being made on a placeholder.

With ``prune`` a merged model is deleted once evaluated; a later re-run then merges it again (the
pipeline cache is refreshed when its output is gone). ``release`` deletes a checkpoint folder
once the steps that read it are done (direct backend only: the pipeline backend keeps its cache).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mergeline.data.records import dump_records, load_records
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_file
from mergeline.stages.common import StageContext, rel

__all__ = ["use_backend", "backend", "context", "finetune", "extract_vector", "evaluate",
           "merge_and_evaluate", "prune", "release", "block", "decide", "Pending", "is_pending", "write_dataset",
           "chance", "variant", "own_accuracies"]


class Pending(Exception):
    """Raised by ``decide`` (direct backend) when a choice would rest on results not computed yet."""


def _task(step: str, params: dict[str, Any], run: Any, label: str, args: tuple[Any, ...], output: str | None
          ) -> dict[str, Any]:
    """The pipeline's Prefect task of ``step`` on dict records; its cache refreshed when ``output`` is gone."""
    from _quality_records import params_of, typed_args
    from tasks import expected_output_missing
    from tasks.stages import TASKS

    task = TASKS[step]
    if output is not None and expected_output_missing(run.root, output):
        task = task.with_options(refresh_cache=True)
    return task(params_of(params), label, typed_args(step, args), run)


class PipelineBackend:
    """The pipeline's Prefect tasks (cached by input hash, one nested MLflow run per call)."""

    name = "pipeline"

    def finetune(self, params: dict[str, Any], run: Any, task: str, mode: str, base: dict[str, Any],
                 data: dict[str, Any], output: str) -> dict[str, Any]:
        return _task("fine-tune", params, run, f"{task}-{mode}", ({"task": task, "mode": mode}, base, data), output)

    def extract_vector(self, params: dict[str, Any], run: Any, base: dict[str, Any], checkpoint: dict[str, Any],
                       output: str) -> dict[str, Any]:
        return _task("extract-vector", params, run, f"{checkpoint['task']}-{checkpoint['mode']}", (base, checkpoint),
                     output)

    def merge_variant(self, params: dict[str, Any], run: Any, spec: dict[str, Any], config: dict[str, Any]
                      ) -> dict[str, Any]:
        return _task("merge", params, run, spec["name"], (spec, config), f"{params['work_dir']}/merged/{spec['name']}")

    def evaluate(self, params: dict[str, Any], run: Any, name: str, model: dict[str, Any], split: str,
                 data: dict[str, Any]) -> dict[str, Any]:
        sets = (*params["tasks"], params["control"])  # what ``sets=None`` meant before: every task and the control
        return _task("evaluate", params, run, f"{name}-{split}", (name, model, split, data, sets), None)

    def merge_and_evaluate(self, params: dict[str, Any], run: Any, spec: dict[str, Any], config: dict[str, Any],
                           split: str, data: dict[str, Any], prune_after: bool) -> dict[str, Any]:
        merged = self.merge_variant(params, run, spec, config)
        evaluation = dict(self.evaluate(params, run, spec["name"], merged, split, data))
        evaluation["merge"] = {"seconds": merged.get("seconds"), "report": merged.get("report") or {}}
        if prune_after:
            prune(run, merged)
        return evaluation

    def release(self, run: Any, record: dict[str, Any], *readers: Any) -> None:
        """Kept: the Prefect cache of the stages that read it would otherwise re-run them."""

    def pending_seen(self) -> int:
        return 0


_BACKEND: Any = PipelineBackend()


def use_backend(new: Any) -> Any:
    """Make ``new`` the backend of every step; returns the previous one."""
    global _BACKEND
    old, _BACKEND = _BACKEND, new
    return old


def backend() -> Any:
    return _BACKEND


def context(params: dict[str, Any], run: Any) -> StageContext:
    from _quality_records import params_of

    return StageContext(params_of(params), Path(run.root), run.device)


def variant(name: str, method: str, lam: float, density: float | None = None,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A variant record in the shape ``mergeline.stages.merge.plan_variants`` makes."""
    return {"name": name, "method": method, "lambda": lam, "density": density, "options": dict(options or {})}


def finetune(params: dict[str, Any], run: Any, task: str, mode: str, base: dict[str, Any], data: dict[str, Any]
             ) -> dict[str, Any]:
    """Stage ``fine-tune`` of ``task`` from the model ``base`` (output ``checkpoints/<task>[-<mode>]``)."""
    from mergeline.pipeline.records import checkpoint_name

    output = f"{params['work_dir']}/checkpoints/{checkpoint_name(task, mode)}"
    return _BACKEND.finetune(params, run, task, mode, base, data, output)


def extract_vector(params: dict[str, Any], run: Any, base: dict[str, Any], checkpoint: dict[str, Any]
                   ) -> dict[str, Any]:
    """Stage ``extract-vector``: τ = checkpoint − base (output ``vectors/<task>[-<mode>]``)."""
    from mergeline.pipeline.records import checkpoint_name

    output = f"{params['work_dir']}/vectors/{checkpoint_name(checkpoint['task'], checkpoint['mode'])}"
    return _BACKEND.extract_vector(params, run, base, checkpoint, output)


def evaluate(params: dict[str, Any], run: Any, name: str, model: dict[str, Any], split: str,
             data: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of ``model`` on ``split`` of ``params['tasks']`` and the control set."""
    return _BACKEND.evaluate(params, run, name, model, split, data)


def merge_and_evaluate(params: dict[str, Any], run: Any, spec: dict[str, Any], config: dict[str, Any],
                       split: str, data: dict[str, Any], prune_after: bool) -> dict[str, Any]:
    """Merge ``spec`` and score it on ``split``; returns the evaluation record plus ``merge`` (seconds, report)."""
    return _BACKEND.merge_and_evaluate(params, run, spec, config, split, data, prune_after)


def prune(run: Any, record: dict[str, Any]) -> None:
    """Delete a merged model folder (only ever one under a work_dir's ``merged/``)."""
    path = Path(run.root) / record["path"]
    if path.parent.name == "merged" and path.is_dir():
        shutil.rmtree(path)


def release(run: Any, record: dict[str, Any], *readers: Any) -> None:
    """Delete the checkpoint folder of ``record`` once every record in ``readers`` is computed (direct only)."""
    _BACKEND.release(run, record, *readers)


def is_pending(obj: Any) -> bool:
    """True when ``obj`` holds a placeholder of the direct backend (its paths start with ``PENDING``)."""
    return "PENDING" in json.dumps(obj, default=str)


@contextmanager
def block() -> Iterator[None]:
    """A stretch of experiment code that ends in a choice; skipped (direct backend) while its inputs are pending.

    With the pipeline backend every step returns real results and this does nothing.
    """
    start = _BACKEND.pending_seen()
    mark = getattr(_BACKEND, "open_block", None)
    token = mark(start) if mark else None
    try:
        yield
    except Pending:
        pass
    finally:
        close = getattr(_BACKEND, "close_block", None)
        if close:
            close(token)


def decide(*inputs: Any) -> None:
    """Before a choice: raise ``Pending`` if a step of the enclosing ``block`` or any of ``inputs`` is pending."""
    check = getattr(_BACKEND, "decide", None)
    if check is not None:
        check(*inputs)


def write_dataset(root: Path, data_dir: str, name: str, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Write ``data_dir/<name>/<split>.jsonl`` atomically; return the data record entry of that task.

    The entry has the shape of ``prepare_data``'s (``{split: {"path", "sha256"}}``), so the pipeline's
    fine-tune and evaluate stages read it like any packaged task. Files are re-validated on read. An
    existing folder with the same files is left alone (the direct backend calls this on every pass).
    """
    folder = root / data_dir / name
    blobs = {split: dump_records(records) for split, records in splits.items()}
    same = folder.is_dir() and all((folder / f"{s}.jsonl").is_file() and (folder / f"{s}.jsonl").read_bytes() == b
                                   for s, b in blobs.items())
    if not same:
        with atomic_dir(folder, kind="dataset") as tmp:
            for split, blob in blobs.items():
                (tmp / f"{split}.jsonl").write_bytes(blob)
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
