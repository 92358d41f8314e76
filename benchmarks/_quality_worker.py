"""The worker side of ``quality.py --direct`` (``_quality_direct``): what runs in each pool process.

A worker is set up once (offline defaults, quiet progress bars, torch threads, the heavy imports) and
then runs steps: one ``mergeline.stages`` call each (fine-tune, extract-vector, importance, vector
diagnostics, evaluate, merge + evaluate), writing the step's record to the planner's cache and
returning its timing, or its error, to the planner.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def init_worker(paths: list[str], threads: int, logs: str) -> None:
    Path(logs).mkdir(parents=True, exist_ok=True)
    with open(Path(logs) / f"worker-{os.getpid()}.log", "ab", buffering=0) as handle:  # lm-eval's chatter
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    from mergeline.env import configure_offline_defaults

    configure_offline_defaults()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)
    import lm_eval  # noqa: F401  (import once per worker, not per step)
    import mergeline.pipeline.table  # noqa: F401
    import mergeline.stages.evaluate  # noqa: F401
    import mergeline.stages.merge  # noqa: F401
    import mergeline.stages.train  # noqa: F401


def execute(unit: dict[str, Any]) -> dict[str, Any]:
    """Run one step in a worker; write its record to the cache; return timing (or the error)."""
    start = time.perf_counter()
    try:
        from _quality_records import call, params_of
        from mergeline.stages.common import StageContext

        ctx = StageContext(params_of(unit["params"]), Path(unit["root"]), unit["device"])
        kind, a = unit["kind"], unit["args"]
        if a.get("sets", ()) is None:  # every task and the control set
            a = dict(a, sets=[*unit["params"]["tasks"], unit["params"]["control"]])
        if kind == "finetune":
            record = call("fine-tune", ctx, {"task": a["task"], "mode": a["mode"]}, a["base"], a["data"])
        elif kind == "extract_vector":
            record = call("extract-vector", ctx, a["base"], a["checkpoint"])
        elif kind == "compute_importance":
            record = call("compute-importance", ctx, a["task"], a["base"], a["checkpoint"], a["vector"], a["data"])
        elif kind == "vector_diagnostics":
            record = call("vector-diagnostics", ctx, a["vectors"])
        elif kind == "evaluate":
            record = call("evaluate", ctx, a["name"], a["model"], a["split"], a["data"], a["sets"])
        elif kind == "merge_evaluate":
            merged = call("merge", ctx, a["spec"], a["config"])
            record = dict(call("evaluate", ctx, a["spec"]["name"], merged, a["split"], a["data"], a["sets"]))
            record["merge"] = {"seconds": merged.get("seconds"), "report": merged.get("report") or {}}
            path = Path(unit["root"]) / merged["path"]
            if path.parent.name == "merged":
                shutil.rmtree(path, ignore_errors=True)
        else:
            raise ValueError(f"unknown step kind {kind!r}")
        write_json(Path(unit["cache"]) / f"{unit['key']}.json", record)
        outcome: dict[str, Any] = {"error": None}
    except Exception:  # reported by the planner; the step is not retried in this run
        outcome = {"error": traceback.format_exc()[-3000:]}
    try:
        import torch

        if torch.cuda.is_available():
            outcome["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        pass
    return dict(outcome, key=unit["key"], kind=unit["kind"], label=unit["label"], pid=os.getpid(),
                seconds=round(time.perf_counter() - start, 3))
