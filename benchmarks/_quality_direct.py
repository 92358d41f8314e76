"""``quality.py --direct``: the quality experiments through the stage library, without Prefect or MLflow,
in parallel worker processes (for a GPU machine that has neither installed).

Why: a merge or an evaluation of the 135M model takes ~2 s on an H100, nearly all of it CPU and disk
work (fp32 safetensors written and read back, lm-eval's set-up), so one process leaves the GPU idle.
Here a pool of worker processes runs the steps side by side on one GPU.

How: the experiments' code (``_quality_lata``, ``_quality_negation``, ``_quality_analogy`` and
``run_stages`` below: the pipeline's own stage table, walked with :class:`DirectCalls` as its
executor) is run again and again
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

Modules: this one plans and drives the pool; ``_quality_backend`` turns steps into cached units;
``_quality_worker`` is what each pool process runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import _quality_steps as steps
from _quality_backend import DirectBackend, DirectRun
from _quality_worker import init_worker, write_json, execute
from _quality_steps import Pending

HERE = Path(__file__).resolve().parent
# rough cost of each kind of step, to start the long ones first
WEIGHT = {"finetune": 10, "compute_importance": 8, "merge_evaluate": 5, "extract_vector": 3, "evaluate": 2,
          "vector_diagnostics": 2}


COST_GUESS_S = 150.0  # one seed's cost measurements on an H100, before one has been timed


# ------------------------------------------------------------------------------------- the pipeline part
class DirectCalls:
    """The pipeline walk's executor on the direct backend: each call a cached unit of the worker pool.

    A call whose result is not computed yet returns a typed placeholder (its paths start with
    ``PENDING``); a merge is not run on its own but with its evaluation (``merge_and_evaluate``), so
    a merged record here names the variant's folder and config only; before the test round of the
    evaluation plan, ``decide`` stops the walk while any validation score is still pending.
    """

    def __init__(self, params: dict[str, Any], run: DirectRun, b: DirectBackend, shared: Path) -> None:
        self.params, self.run_handle, self.b, self.shared = params, run, b, shared
        self.seen: list[dict[str, Any]] = []
        self.merge_info: dict[str, dict[str, Any]] = {}  # variant -> seconds and report of its merge

    def run(self, calls: Any) -> list[Any]:
        return [self._one(call) for call in calls]

    def _one(self, call: Any) -> Any:
        from mergeline.pipeline.records import Evaluation, Merged, decode, encode

        p, run, b, step = self.params, self.run_handle, self.b, call.step.name
        args = [encode(a) for a in call.args]
        if step == "prepare-data":
            return decode(call.step.output, b.prepare_data(p, run))
        if step == "import-base":
            return decode(call.step.output, b.import_base(p, run, self.shared))
        if step == "fine-tune":
            return decode(call.step.output, steps.finetune(p, run, args[0]["task"], args[0]["mode"], args[1], args[2]))
        if step == "extract-vector":
            return decode(call.step.output, steps.extract_vector(p, run, args[0], args[1]))
        if step == "compute-importance":
            record = b.compute_importance(p, *args)
            return decode(call.step.output, {"kind": "sta_taylor", "plot": "PENDING", **record})
        if step == "vector-diagnostics":
            return decode(call.step.output, b.vector_diagnostics(p, args[0]))
        if step == "merge":  # merged with its evaluation, see merge_and_evaluate
            variant, config = call.args
            return Merged(variant=variant, config=config, path=f"{p['work_dir']}/merged/{variant.name}", weights={})
        if step == "evaluate":
            name, model, split, data, sets = call.args
            if isinstance(model, Merged):
                if split == "test":  # a method's best variant: chosen on validation scores, all computed?
                    steps.decide(self.seen)
                result = b.merge_and_evaluate(p, run, encode(model.variant), model.config, split, args[3], True,
                                              list(sets))
                if split == "validation":
                    self.merge_info[name] = {"seconds": result["merge"]["seconds"], "report": result["merge"]["report"]}
            else:
                result = b.evaluate(p, run, name, args[1], split, args[3], list(sets))
            self.seen.append(result)
            return Evaluation(name=name, split=split, metrics=result["metrics"], raw=result.get("raw") or {})
        raise ValueError(f"--direct: step {step} is not supported (tasks given as models are pipeline-only)")


def run_stages(params: dict[str, Any], run: DirectRun, b: DirectBackend, shared: Path) -> dict[str, Any]:
    """The pipeline's own stage table (``mergeline.pipeline``) walked on the direct backend, up to evaluation.

    The base is scored first, as the plan scores it: negation needs those scores while the addition
    is still being computed. Records have the pipeline's shape (``_quality_records.as_dict``), except
    ``merged[name]``: path, seconds and report of the merge.
    """
    from _quality_records import as_dict
    from mergeline.pipeline.table import stage
    from mergeline.pipeline.walker import walk
    from mergeline.stages.evaluate import SPLITS, evaluation_sets

    ctx = steps.context(params, run)
    calls = DirectCalls(params, run, b, shared)
    exp = walk(ctx, calls, until="merge")
    base_scores = {s: b.evaluate(params, run, "base", as_dict(exp)["base"], s, as_dict(exp)["data"],
                                 list(evaluation_sets(ctx, "base", s))) for s in SPLITS}
    records = {**as_dict(exp), "reference": {"base": base_scores}}
    with steps.block():
        evaluate = stage("evaluate")
        records = as_dict(evaluate.advance(evaluate, ctx, exp, calls))
        steps.decide(calls.seen)
        for key, ck in records["checkpoints"].items():  # full checkpoints stay: STA importance (and its cost) reads them
            if ck["mode"] == "talos":
                steps.release(run, ck, records["vectors"][key])
    for name, info in calls.merge_info.items():
        records["merged"][name].update(info)
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
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=init_worker,
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
        write_json(out / "direct-steps.json", {"timings": timings, "failed": b.failed, "passes": passes,
                                                "seconds": elapsed(), "status": status, "workers": workers})
        if export:
            write_json(export / "direct-steps.json", {"timings": timings, "failed": b.failed, "passes": passes,
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
    write_json(path, result)
    if export:
        write_json(export / f"seed{seed}.json", result)


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
