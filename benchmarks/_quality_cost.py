"""Cost of each method's importance and merge stages: wall time and peak memory (RSS).

Each measurement runs the pipeline's own stage function in a fresh process (``python
benchmarks/_quality_cost.py SPEC.json``), so the peak RSS (``os.wait4``, via ``_measure.run_measured``)
is that stage's alone, interpreter and imports included. Outputs go to a scratch folder that is
deleted afterwards; nothing the pipeline cached is touched.

    importance   STA: Taylor scores |∇L(θ_t) ⊙ τ_t| of every task (``compute-importance``)
                 TaLoS: the sensitivity mask of every task on θ0 (the part of ``fine-tune[talos]``
                 before training)
                 TA, TIES, DARE-TIES, MetaGPT, LATA: none as a stage (MetaGPT's norms and LATA's
                 layer similarities are the merge's statistics pass, so they count as merge time)
    merge        the chosen variant of the method (``merge``)

``inner s`` is the stage's own timing (no interpreter start-up); ``wall s`` is the whole process;
``peak GPU GB`` is ``torch.cuda.max_memory_allocated`` in that process (on a CUDA device).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

MARK = "QUALITY_COST "
GB = 1e9


def _child(spec_file: str) -> None:
    """Run one measured stage in this process; print its own timing after ``MARK``."""
    from mergeline.env import configure_offline_defaults

    configure_offline_defaults()
    from _quality_records import call, params_of
    from mergeline.stages.common import StageContext

    spec = json.loads(Path(spec_file).read_text())
    params = dict(spec["params"], work_dir=spec["scratch"])
    ctx = StageContext(params_of(params), Path(spec["root"]), spec["device"])
    start = time.perf_counter()
    if spec["kind"] == "merge":
        call("merge", ctx, spec["variant"], spec["config"])
    elif spec["kind"] == "sta":
        for task, (checkpoint, vector) in spec["inputs"].items():
            call("compute-importance", ctx, task, spec["base"], checkpoint, vector, spec["data"])
    else:
        _talos_masks(ctx, spec)
    seconds = time.perf_counter() - start
    peak = None
    if str(spec["device"]).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / GB
    print(MARK + json.dumps({"seconds": seconds, "cuda_peak_gb": peak}), flush=True)


def _talos_masks(ctx: Any, spec: dict[str, Any]) -> None:
    from mergeline.finetune import load_causal_lm, read_records, talos_mask

    p = ctx.params
    for task in p.tasks:
        model, tokenizer = load_causal_lm(ctx.root / spec["base"]["path"], ctx.device)
        calib = read_records(ctx.root / spec["data"]["tasks"][task]["validation"]["path"], limit=p.talos.calib_examples)
        talos_mask(model, tokenizer, calib, p.talos.keep, p.talos.rounds, p.finetune.seed, p.finetune.max_length,
                   delimiter="")
        del model


def _measure(spec: dict[str, Any], scratch: Path) -> dict[str, float | str | None]:
    from _measure import run_measured

    scratch.mkdir(parents=True, exist_ok=True)
    spec_file = scratch / "spec.json"
    spec_file.write_text(json.dumps(dict(spec, scratch=str(scratch / "work")), default=str))
    log = scratch.parent / f"{scratch.name}.log"
    measured = run_measured([sys.executable, str(Path(__file__).resolve()), str(spec_file)], log)
    inner = peak = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(MARK):
            mark = json.loads(line[len(MARK):])
            inner, peak = mark["seconds"], mark.get("cuda_peak_gb")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"wall_s": measured.seconds, "inner_s": inner, "peak_rss_gb": measured.max_rss / GB,
            "peak_gpu_gb": peak, "error": measured.error}


def measure_costs(params: dict[str, Any], run: Any, records: dict[str, Any], out: Path,
                  extra_merges: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None) -> dict[str, Any]:
    """{method: {"importance": {...} | None, "merge": {...}}} for each method's chosen variant."""
    common = {"params": params, "root": run.root, "device": run.device, "base": records["base"],
              "data": records["data"]}
    merges = {records["variants"][name]["method"]: (records["variants"][name], records["configs"][name])
              for name in records["selection"]["best_per_method"].values()}
    merges.update(extra_merges or {})
    costs: dict[str, Any] = {}
    importance: dict[str, dict[str, Any]] = {}
    if records.get("importance"):
        print("cost: STA importance")
        inputs = {t: (records["checkpoints"][f"{t}:full"], records["vectors"][f"{t}:full"]) for t in params["tasks"]}
        importance["sta"] = _measure(dict(common, kind="sta", inputs=inputs), out / "sta-importance")
    if "talos" in merges:
        print("cost: TaLoS masks")
        importance["talos"] = _measure(dict(common, kind="talos"), out / "talos-importance")
    for method, (spec, config) in merges.items():
        print(f"cost: merge {spec['name']}")
        costs[method] = {"variant": spec["name"], "importance": importance.get(method),
                         "merge": _measure(dict(common, kind="merge", variant=spec, config=config),
                                           out / f"merge-{method}")}
    return costs


if __name__ == "__main__":
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the checkout, where mergeline is not installed
    _child(sys.argv[1])
