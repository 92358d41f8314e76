"""``quality.py --direct``: the quality experiments through the stage library, without Prefect or MLflow,
in parallel worker processes (for a GPU machine that has neither installed).

Why: a merge or an evaluation of the 135M model takes ~2 s on an H100, nearly all of it CPU and disk
work (fp32 safetensors written and read back, lm-eval's set-up), so one process leaves the GPU idle.
Here a pool of worker processes runs the steps side by side on one GPU.

How: the experiments' code (``_quality_lata``, ``_quality_negation``, ``_quality_analogy`` and
``run_stages`` below: ``flows.pipeline.run_stages``'s stages with the pipeline's own evaluation plan,
``evaluate_experiment``) is run again and again
by a planner. Each step (fine-tune, extract-vector, compute-importance, vector diagnostics,
evaluate, merge + evaluate) is the same ``mergeline.stages`` function the pipeline's Prefect task
wraps. A step whose result is cached (``<out>/.direct-cache/<key>.json``) returns it; a step whose
inputs are all computed is handed to the pool and returns a *pending* placeholder (paths starting
with ``PENDING``), as does a step whose inputs are still pending. ``_quality_steps.block`` /
``decide`` skip any choice made on a placeholder (best λ, the negation point), so nothing runs on a
wrong choice. Once a pass of every seed's code finds no pending step, each seed's result is
complete and written (``<out>/seed<N>/quality.json``, the same JSON ``quality.py`` writes).

Cache key: sha256 of the step's kind, its params, its arguments and the content hashes (sha256 of
the records) of every path named in them; an unchanged re-run (or a resumed one) recomputes nothing.

Differences from the Prefect path, all deliberate and documented in docs/quality.md: each merge is
evaluated and deleted in one step (``prune_merged`` always), so the test score of the best variant
re-merges it; the base model is imported once and shared by the seeds; TaLoS, LATA-expert and
analogy checkpoints are deleted once their vectors and scores exist (disk); no MLflow runs are made
here (``quality.py --report-only`` logs the JSON to MLflow afterwards); ``prune_work`` is ignored.
Cost (``_quality_cost``) runs after the parallel part, alone on the machine, one seed after another
while the ``--deadline`` allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import _quality_steps as steps
from _quality_steps import Pending, is_pending

HERE = Path(__file__).resolve().parent
# rough cost of each kind of step, to start the long ones first
WEIGHT = {"finetune": 10, "compute_importance": 8, "merge_evaluate": 5, "extract_vector": 3, "evaluate": 2,
          "vector_diagnostics": 2}


COST_GUESS_S = 150.0  # one seed's cost measurements on an H100, before one has been timed


@dataclass(frozen=True)
class DirectRun:
    """What the experiments read of a run handle (``tasks._stage.RunHandle`` without Prefect)."""

    root: str
    device: str
    parent_run_id: str | None = None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


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

    def merge_variant(self, params: dict[str, Any], run: Any, spec: dict[str, Any], config: dict[str, Any]
                      ) -> dict[str, Any]:
        raise NotImplementedError("direct backend: merges are evaluated in the same step (merge_and_evaluate)")

    def release(self, run: Any, record: dict[str, Any], *readers: Any) -> None:
        if is_pending([record, readers]):
            return
        path = Path(run.root) / record["path"]
        if path.parent.name == "checkpoints" and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)

    # --- steps run here, in the planner's process, once
    def prepare_data(self, params: dict[str, Any], run: Any) -> dict[str, Any]:
        from mergeline.stages.prepare import prepare_data

        key = _hash(["prepare_data", {k: params[k] for k in ("data", "tasks", "control", "data_dir")}])
        cached = self.cache / f"{key}.json"
        if cached.is_file() and all((self.root / s["path"]).is_file() for t in json.loads(cached.read_text())["tasks"].values()
                                    for s in t.values()):
            return json.loads(cached.read_text())
        record = prepare_data(steps.context(params, run))
        _write_json(cached, record)
        return record

    def import_base(self, params: dict[str, Any], run: Any, shared: Path) -> dict[str, Any]:
        """The base model imported once into ``shared/base`` for every seed (the import is seed-free)."""
        from mergeline.stages.prepare import import_base

        key = _hash(["import_base", params["base_model"], str(shared)])
        cached = self.cache / f"{key}.json"
        if cached.is_file():
            record = json.loads(cached.read_text())
            if (self.root / record["path"]).is_dir():
                self._learn(record)
                return record
        from mergeline.stages.common import rel

        shared_rel = rel(shared, self.root)
        record = import_base(steps.context(dict(params, work_dir=shared_rel), run))
        _write_json(cached, record)
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


# ------------------------------------------------------------------------------------------ workers
def _init_worker(paths: list[str], threads: int, logs: str) -> None:
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
    import mergeline.stages.evaluate  # noqa: F401
    import mergeline.stages.merge  # noqa: F401
    import mergeline.stages.train  # noqa: F401


def _evaluate(ctx: Any, name: str, model_path: str, split: str, data: dict[str, Any], sets: list[str] | None
              ) -> dict[str, Any]:
    from mergeline.stages.evaluate import evaluate

    return evaluate(ctx, name, model_path, split, data) if sets is None else \
        evaluate(ctx, name, model_path, split, data, sets)


def execute(unit: dict[str, Any]) -> dict[str, Any]:
    """Run one step in a worker; write its record to the cache; return timing (or the error)."""
    start = time.perf_counter()
    try:
        from mergeline.params import ExperimentParams
        from mergeline.stages import importance, merge, train
        from mergeline.stages.common import StageContext

        ctx = StageContext(ExperimentParams.model_validate(unit["params"]), Path(unit["root"]), unit["device"])
        kind, a = unit["kind"], unit["args"]
        if kind == "finetune":
            record = train.finetune(ctx, a["task"], a["mode"], a["base"], a["data"])
        elif kind == "extract_vector":
            record = train.extract_vector(ctx, a["base"], a["checkpoint"])
        elif kind == "compute_importance":
            record = importance.compute_importance(ctx, a["task"], a["base"], a["checkpoint"], a["vector"], a["data"])
        elif kind == "vector_diagnostics":
            record = importance.vector_diagnostics(ctx, a["vectors"])
        elif kind == "evaluate":
            record = _evaluate(ctx, a["name"], a["model"]["path"], a["split"], a["data"], a["sets"])
        elif kind == "merge_evaluate":
            merged = merge.merge_variant(ctx, a["spec"], a["config"])
            record = dict(_evaluate(ctx, a["spec"]["name"], merged["path"], a["split"], a["data"], a["sets"]))
            record["merge"] = {"seconds": merged.get("seconds"), "report": merged.get("report") or {}}
            path = Path(unit["root"]) / merged["path"]
            if path.parent.name == "merged":
                shutil.rmtree(path, ignore_errors=True)
        else:
            raise ValueError(f"unknown step kind {kind!r}")
        _write_json(Path(unit["cache"]) / f"{unit['key']}.json", record)
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


# ------------------------------------------------------------------------------------- the pipeline part
def run_stages(params: dict[str, Any], run: DirectRun, b: DirectBackend, shared: Path) -> dict[str, Any]:
    """``flows.pipeline.run_stages`` up to evaluation, step for step, on the direct backend.

    The evaluation plan is the pipeline's own (``mergeline.stages.evaluate.evaluate_experiment``);
    only its scoring function differs: a merged variant is merged, scored and deleted in one step.
    Records have the pipeline's shape, except ``merged[name]``: path, seconds and report of the merge.
    """
    from mergeline.stages.evaluate import SPLITS, evaluate_experiment, evaluation_sets
    from mergeline.stages.merge import merge_config, plan_variants

    ctx = steps.context(params, run)
    p = ctx.params
    records: dict[str, Any] = {}
    records["data"] = data = b.prepare_data(params, run)
    records["base"] = base = b.import_base(params, run, shared)
    modes = ["full"] + (["talos"] if p.talos.enabled else [])
    checkpoints = {f"{t}:{m}": steps.finetune(params, run, t, m, base, data) for t in p.tasks for m in modes}
    vectors = {k: steps.extract_vector(params, run, base, ck) for k, ck in checkpoints.items()}
    importance: dict[str, Any] = {}
    if "sta" in p.merge.methods:
        importance = {t: b.compute_importance(params, t, base, checkpoints[f"{t}:full"], vectors[f"{t}:full"], data)
                      for t in p.tasks}
    diagnostics = b.vector_diagnostics(params, {k.replace(":", "-"): v for k, v in vectors.items()})
    records.update(checkpoints=checkpoints, vectors=vectors, importance=importance, diagnostics=diagnostics)

    variants = {v["name"]: v for v in plan_variants(ctx)}
    configs = {name: merge_config(ctx, v, base, vectors, importance) for name, v in variants.items()}
    to_merge = {name: {"variant": v, "config": configs[name]} for name, v in variants.items()}
    merged = {name: {"path": f"{p.work_dir}/merged/{name}"} for name in variants}
    records.update(variants=variants, configs=configs, merged=merged)
    seen: list[dict[str, Any]] = []

    def ev(name: str, model: dict[str, Any], split: str, sets: list[str] | None) -> dict[str, Any]:
        if "config" not in model:  # the base or a single-task checkpoint
            result = b.evaluate(params, run, name, model, split, data, sets)
        else:
            if split == "test":  # a method's best variant: chosen on validation scores, all computed?
                steps.decide(seen)
            result = b.merge_and_evaluate(params, run, model["variant"], model["config"], split, data, True, sets)
            if split == "validation":
                merged[name].update(seconds=result["merge"]["seconds"], report=result["merge"]["report"])
        seen.append(result)
        return result

    # the base's scores first, as the plan scores them (the same steps): negation needs them while
    # the addition is still being computed
    records["reference"] = {"base": {s: b.evaluate(params, run, "base", base, s, data,
                                                   evaluation_sets(ctx, "base", s)) for s in SPLITS}}
    with steps.block():
        evaluation = evaluate_experiment(ctx, base, checkpoints, to_merge, variants, ev)
        steps.decide(seen)
        records.update(evaluation)
        for key, ck in checkpoints.items():  # full checkpoints stay: STA importance (and its cost) reads them
            if ck["mode"] == "talos":
                steps.release(run, ck, vectors[key])
    return records


# ------------------------------------------------------------------------------------------- planner
def seed_program(params: dict[str, Any], quality: Any, seed: int, run: DirectRun, b: DirectBackend, shared: Path,
                 addition_result: Callable[..., dict[str, Any]], stage_seconds: Callable[..., Any]
                 ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """One pass of a seed's experiments: (result so far, records, experiments still pending)."""
    from _quality_analogy import run_analogy
    from _quality_lata import run_lata
    from _quality_negation import run_negation

    start = b.pending
    records = run_stages(params, run, b, shared)
    result: dict[str, Any] = {"seed": seed, "tasks": params["tasks"], "control": params["control"],
                              "backend": "direct"}
    waiting = []
    if b.pending == start and "selection" in records:
        result["addition"] = addition_result(records, params)
        result["stage_seconds"] = stage_seconds(records)
    else:
        waiting.append("addition")
    for name, fn, enabled in (("lata", run_lata, quality.lata.enabled),
                              ("negation", run_negation, quality.negation.enabled),
                              ("analogy", run_analogy, quality.analogy.enabled)):
        if not enabled:
            continue
        before = b.pending
        try:
            value = fn(params, quality, run, records)
        except Pending:
            value = None
        if b.pending == before and value is not None:
            result[name] = value
        else:
            waiting.append(name)
    return result, records, waiting


def run_direct(pipeline: dict[str, Any], quality: Any, seeds: list[int], out: Path, out_arg: str, root: Path,
               *, seed_params: Callable[..., dict[str, Any]], addition_result: Callable[..., Any],
               stage_seconds: Callable[..., Any], workers: int, threads: int, deadline: float,
               export: Path | None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every seed's experiments on the worker pool until done or ``deadline`` seconds; then cost. Returns
    the complete per-seed results (each also written to ``<out>/seed<N>/quality.json`` and ``export``)."""
    from mergeline.stages.common import resolve_device

    t0 = time.monotonic()
    device = resolve_device(pipeline["device"])
    run = DirectRun(str(root), device)
    b = DirectBackend(root, device, out / ".direct-cache")
    steps.use_backend(b)
    shared = out / "shared"
    params = {s: seed_params(pipeline, quality, s, out_arg) for s in seeds}
    timings: list[dict[str, Any]] = []
    written: dict[int, dict[str, Any]] = {}
    final_records: dict[int, dict[str, Any]] = {}
    paths = [str(HERE), str(root)] + [p for p in sys.path if p]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(paths, threads, str(out / "workers")))
    futures: dict[Future, dict[str, Any]] = {}
    passes = 0
    status = "done"

    def elapsed() -> float:
        return time.monotonic() - t0

    def plan() -> list[dict[str, Any]]:
        nonlocal passes
        passes += 1
        started = time.monotonic()
        b.runnable, b.pending = {}, 0
        waiting_all = {}
        for seed in seeds:
            with contextlib.redirect_stdout(io.StringIO()):  # the experiments' progress lines, every pass
                result, records, waiting = seed_program(params[seed], quality, seed, run, b, shared,
                                                        addition_result, stage_seconds)
            waiting_all[seed] = waiting
            if "addition" in result and (seed not in written or len(result) > len(written[seed])):
                written[seed] = result
                final_records[seed] = records
                _save(out, export, seed, result)
        units = _one_per_output(list(b.runnable.values()))
        log(f"[{elapsed():6.0f}s] pass {passes} ({time.monotonic() - started:.1f} s): {len(units)} steps to run, "
            f"{len(futures)} running, {len(timings)} done, {len(b.failed)} failed; waiting: "
            + "; ".join(f"{s}: {','.join(w) or '-'}" for s, w in waiting_all.items()))
        return units

    try:
        units = plan()
        while units or futures:
            for unit in sorted(units, key=lambda u: -WEIGHT.get(u["kind"], 1)):
                b.inflight.add(unit["key"])
                futures[pool.submit(execute, unit)] = unit
            units = []
            left = deadline - elapsed()
            if left <= 0:
                status = "deadline"
                break
            done, _ = wait(list(futures), timeout=None if left == float("inf") else left,
                           return_when=FIRST_COMPLETED)
            for future in done:
                unit = futures.pop(future)
                b.inflight.discard(unit["key"])
                outcome = future.result()
                timings.append({k: outcome.get(k) for k in ("kind", "label", "seconds", "pid", "cuda_peak_gb")})
                if outcome["error"]:
                    b.failed[unit["key"]] = outcome["error"]
                    log(f"[{elapsed():6.0f}s] FAILED {unit['label']}: {outcome['error'].strip().splitlines()[-1]}")
                    log(outcome["error"])
            if done and len(futures) < workers + 2:  # workers about to idle: plan what became runnable
                units = plan()
        if status == "deadline":
            log(f"[{elapsed():6.0f}s] deadline: {len(futures)} steps cancelled or left running")
            for future in futures:
                future.cancel()
            plan()  # write what the finished steps completed
    finally:
        pool.shutdown(wait=status != "deadline", cancel_futures=True)
        _write_json(out / "direct-steps.json", {"timings": timings, "failed": b.failed, "passes": passes,
                                                "seconds": elapsed(), "status": status, "workers": workers})
        if export:
            _write_json(export / "direct-steps.json", {"timings": timings, "failed": b.failed, "passes": passes,
                                                       "seconds": elapsed(), "status": status, "workers": workers})
    _summarise(timings, log)
    if status == "done" and quality.cost.enabled:
        _costs(params, quality, written, final_records, run, out, export, deadline, elapsed, log)
    return [written[s] for s in seeds if s in written]


def _one_per_output(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most one step per merged-model folder at a time (a test merge re-uses its validation name)."""
    seen, kept = set(), []
    for unit in units:
        if unit["kind"] == "merge_evaluate":
            target = (unit["params"]["work_dir"], unit["args"]["spec"]["name"])
            if target in seen:
                continue
            seen.add(target)
        kept.append(unit)
    return kept


def _save(out: Path, export: Path | None, seed: int, result: dict[str, Any]) -> None:
    path = out / f"seed{seed}" / "quality.json"
    if "cost" not in result and path.is_file():  # measured by an earlier (resumed) run
        earlier = json.loads(path.read_text()).get("cost")
        if earlier:
            result["cost"] = earlier
    _write_json(path, result)
    if export:
        _write_json(export / f"seed{seed}.json", result)


def _summarise(timings: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    by_kind: dict[str, list[float]] = {}
    for t in timings:
        by_kind.setdefault(t["kind"], []).append(t["seconds"] or 0.0)
    for kind, secs in sorted(by_kind.items()):
        log(f"steps {kind}: {len(secs)} × mean {sum(secs) / len(secs):.1f} s (max {max(secs):.1f})")


def _costs(params: dict[int, dict[str, Any]], quality: Any, written: dict[int, dict[str, Any]],
           records: dict[int, dict[str, Any]], run: DirectRun, out: Path, export: Path | None, deadline: float,
           elapsed: Callable[[], float], log: Callable[[str], None]) -> None:
    """Cost of each seed's chosen merges and importance stages, alone on the machine, while time allows."""
    from _quality_cost import measure_costs

    per_seed = COST_GUESS_S
    for seed, result in written.items():
        if quality.cost.seeds is not None and seed not in quality.cost.seeds:
            continue
        if result.get("cost"):
            continue
        if deadline - elapsed() < per_seed * 1.1:
            log(f"[{elapsed():6.0f}s] cost: no time left for seed {seed} (one seed takes ~{per_seed:.0f} s)")
            break
        start = elapsed()
        lata = result.get("lata")
        result["cost"] = measure_costs(params[seed], run, records[seed], out / f"seed{seed}" / "cost",
                                       {"lata": (lata["spec"], lata["config"])} if lata else None)
        per_seed = elapsed() - start
        log(f"[{elapsed():6.0f}s] cost of seed {seed}: {per_seed:.0f} s")
        _save(out, export, seed, result)
