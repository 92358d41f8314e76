"""The planner side of ``quality.py --direct`` (``_quality_direct``): steps as cached units.

:class:`DirectBackend` gives ``_quality_steps`` the same calls as the Prefect backend. A call whose
record is in the cache returns it; otherwise it becomes a unit for the worker pool (``_quality_worker``)
and returns a pending placeholder, so the experiments' code can be re-run until nothing is pending.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import _quality_steps as steps
from _quality_steps import Pending, is_pending
from _quality_worker import write_json


@dataclass(frozen=True)
class DirectRun:
    """What the experiments read of a run handle (``tasks.RunHandle`` without Prefect)."""

    root: str
    device: str
    parent_run_id: str | None = None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class DirectBackend:
    """Steps of ``_quality_steps`` as cached units; uncomputed ones are collected for the worker pool."""

    name = "direct"

    def __init__(self, root: Path, device: str, cache: Path) -> None:
        self.root, self.device, self.cache = root, device, cache
        cache.mkdir(parents=True, exist_ok=True)
        self.runnable: dict[str, dict[str, Any]] = {}
        self.inflight: set[str] = set()
        self.failed: dict[str, str] = {}
        self.pending = 0
        self.blocks: list[int] = []
        self.hashes: dict[str, str] = {}

    # --- the planner's bookkeeping
    def pending_seen(self) -> int:
        return self.pending

    def open_block(self, start: int) -> int:
        self.blocks.append(start)
        return len(self.blocks)

    def close_block(self, token: int | None) -> None:
        if token is not None:
            del self.blocks[token - 1:]

    def decide(self, *inputs: Any) -> None:
        if (self.blocks and self.pending > self.blocks[-1]) or (inputs and is_pending(inputs)):
            raise Pending()

    def _learn(self, record: Any) -> None:
        if isinstance(record, dict) and isinstance(record.get("path"), str) and isinstance(record.get("sha256"), str):
            self.hashes[record["path"]] = record["sha256"]

    def unit(self, kind: str, label: str, params: dict[str, Any], args: dict[str, Any],
             placeholder: dict[str, Any]) -> dict[str, Any]:
        """The cached result of a step, else a placeholder (and the step queued when its inputs exist)."""
        blob = json.dumps(args, sort_keys=True, default=str)
        if "PENDING" in blob:
            self.pending += 1
            return placeholder
        deps = sorted({self.hashes[s] for s in _strings(args, str(self.root)) if s in self.hashes})
        key = _hash([kind, params, args, deps])
        cached = self.cache / f"{key}.json"
        if cached.is_file():
            record = json.loads(cached.read_text())
            self._learn(record)
            return record
        self.pending += 1
        if key not in self.failed and key not in self.inflight:
            self.runnable[key] = {"key": key, "kind": kind, "label": label, "params": params, "args": args,
                                  "root": str(self.root), "device": self.device, "cache": str(self.cache)}
        return placeholder

    # --- the steps (same signatures as _quality_steps.PipelineBackend)
    def finetune(self, params: dict[str, Any], run: Any, task: str, mode: str, base: dict[str, Any],
                 data: dict[str, Any], output: str) -> dict[str, Any]:
        holder = {"task": task, "mode": mode, "path": f"PENDING/{output}", "sha256": "PENDING", "meta": {}}
        return self.unit("finetune", f"{_seed(params)}fine-tune {task}-{mode}", params,
                         {"task": task, "mode": mode, "base": base, "data": data}, holder)

    def extract_vector(self, params: dict[str, Any], run: Any, base: dict[str, Any], checkpoint: dict[str, Any],
                       output: str) -> dict[str, Any]:
        holder = {"task": checkpoint["task"], "mode": checkpoint["mode"], "path": f"PENDING/{output}",
                  "sha256": "PENDING", "meta": {}}
        return self.unit("extract_vector", f"{_seed(params)}vector {checkpoint['task']}-{checkpoint['mode']}",
                         params, {"base": base, "checkpoint": checkpoint}, holder)

    def compute_importance(self, params: dict[str, Any], task: str, base: dict[str, Any], checkpoint: dict[str, Any],
                           vector: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        holder = {"task": task, "path": f"PENDING/{params['work_dir']}/importance/{task}/sta.safetensors",
                  "sha256": "PENDING"}
        return self.unit("compute_importance", f"{_seed(params)}importance {task}", params,
                         {"task": task, "base": base, "checkpoint": checkpoint, "vector": vector, "data": data}, holder)

    def vector_diagnostics(self, params: dict[str, Any], vectors: dict[str, Any]) -> dict[str, Any]:
        return self.unit("vector_diagnostics", f"{_seed(params)}vector diagnostics", params, {"vectors": vectors},
                         {"path": "PENDING", "summary": {}})

    def _eval_holder(self, params: dict[str, Any], name: str, split: str, sets: list[str] | None) -> dict[str, Any]:
        names = sets if sets is not None else [*params["tasks"], params["control"]]
        return {"name": name, "split": split, "status": "PENDING", "metrics": {t: 0.0 for t in names}, "raw": {},
                "merge": {"seconds": None, "report": {}}}

    def evaluate(self, params: dict[str, Any], run: Any, name: str, model: dict[str, Any], split: str,
                 data: dict[str, Any], sets: list[str] | None = None) -> dict[str, Any]:
        return self.unit("evaluate", f"{_seed(params)}evaluate {name} {split}", params,
                         {"name": name, "model": model, "split": split, "data": data, "sets": sets},
                         self._eval_holder(params, name, split, sets))

    def merge_and_evaluate(self, params: dict[str, Any], run: Any, spec: dict[str, Any], config: dict[str, Any],
                           split: str, data: dict[str, Any], prune_after: bool = True,
                           sets: list[str] | None = None) -> dict[str, Any]:
        # always pruned: 3 seeds × ~130 merged models of 0.54 GB do not fit the disk
        return self.unit("merge_evaluate", f"{_seed(params)}merge+evaluate {spec['name']} {split}", params,
                         {"spec": spec, "config": config, "split": split, "data": data, "sets": sets},
                         self._eval_holder(params, spec["name"], split, sets))

    def release(self, run: Any, record: dict[str, Any], *readers: Any) -> None:
        if is_pending([record, readers]):
            return
        path = Path(run.root) / record["path"]
        if path.parent.name == "checkpoints" and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)

    # --- steps run here, in the planner's process, once
    def prepare_data(self, params: dict[str, Any], run: Any) -> dict[str, Any]:
        from _quality_records import call

        key = _hash(["prepare_data", {k: params[k] for k in ("data", "tasks", "control", "data_dir")}])
        cached = self.cache / f"{key}.json"
        if cached.is_file() and all((self.root / s["path"]).is_file() for t in json.loads(cached.read_text())["tasks"].values()
                                    for s in t.values()):
            return json.loads(cached.read_text())
        record = call("prepare-data", steps.context(params, run), {})
        write_json(cached, record)
        return record

    def import_base(self, params: dict[str, Any], run: Any, shared: Path) -> dict[str, Any]:
        """The base model imported once into ``shared/base`` for every seed (the import is seed-free)."""
        from _quality_records import call

        key = _hash(["import_base", params["base_model"], str(shared)])
        cached = self.cache / f"{key}.json"
        if cached.is_file():
            record = json.loads(cached.read_text())
            if (self.root / record["path"]).is_dir():
                self._learn(record)
                return record
        from mergeline.stages.common import rel

        shared_rel = rel(shared, self.root)
        record = call("import-base", steps.context(dict(params, work_dir=shared_rel), run))
        write_json(cached, record)
        self._learn(record)
        return record


def _strings(obj: Any, root: str) -> Iterator[str]:
    """Every string leaf of ``obj``, absolute paths under ``root`` also made relative (as records hold them)."""
    if isinstance(obj, str):
        yield obj
        if obj.startswith(root + "/"):
            yield obj[len(root) + 1:]
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value, root)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _strings(value, root)


def _seed(params: dict[str, Any]) -> str:
    return f"[seed {params['data']['seed']}] "
