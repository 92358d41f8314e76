"""Wall time of each pipeline stage of one experiment on one device (no Prefect, no MLflow).

    .venv/bin/python benchmarks/stage_times.py --device cuda [--params params/default.yaml]
        [--set finetune.steps=2 ...] [--root bench_out/stage_times/cuda] [--json OUT.json]
        [--compare OTHER.json]

Walks the pipeline's stage table (``mergeline.pipeline.walker.walk``) in this process, each call
of each step timed: prepare-data, import-base, fine-tune (full and TaLoS per task), extract-vector,
compute-importance (STA) and the vector diagnostics, merge (every planned variant), evaluate
(lm-eval, with the pipeline's own plan: the base and the single-task models, every merged variant on
validation, each method's best on test). Outputs go to a fresh ``--root`` folder
(deleted and rebuilt on each run; a folder this script did not make is refused), so every stage
computes instead of hitting a cache. On CUDA, fine-tune uses the stage's bf16 autocast when the GPU
supports it; the CUDA context is started by the environment probe before the clock runs, so no
stage pays for it (the ``cuda-init`` row is only the first allocation).

Each stage's time is the wall time of all its calls (GPU work synchronised at both ends). It prints
a markdown table (stage, calls, seconds, share of the total) and writes JSON (``--json``, default
``<root>/stage_times-<device>.json``) with per-call times, the environment (GPU name, library
versions, load average) and the selection result, so two runs can be checked to have done the same
work. ``--compare OTHER.json`` adds the other run's seconds and the ratio this ÷ other per stage (run
the CPU side with ``--compare`` on the CUDA JSON: the ratio is the GPU's speed-up).

``--skip-eval`` is a fallback for machines where lm-eval cannot run: evaluation is then timed with
``mergeline.finetune.batching.choice_logprobs`` (the same acc score, without lm-eval) and the JSON
says so (``"evaluator": "choice_logprobs"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARKER = ".stage_times"  # a --root holding this was made by this script and may be wiped


class Clock:
    """Per-stage wall time summed over calls; CUDA work is synchronised so it lands in its stage."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.stages: dict[str, dict[str, float]] = {}
        self.calls: list[dict[str, Any]] = []

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, stage: str, key: str = "") -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        seconds = time.perf_counter() - start
        row = self.stages.setdefault(stage, {"calls": 0, "seconds": 0.0})
        row["calls"] += 1
        row["seconds"] += seconds
        self.calls.append({"stage": stage, "key": key, "seconds": round(seconds, 3)})
        print(f"[{time.strftime('%H:%M:%S')}] {stage} {key}: {seconds:.2f} s", flush=True)


def fresh_root(root: Path) -> None:
    """Empty ``root`` for a cold run; refuse a non-empty folder this script did not create."""
    from mergeline.errors import MergelineError

    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise MergelineError(f"--root {root}: not empty and not made by stage_times.py (no {MARKER}); "
                                 "pick a new folder")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by benchmarks/stage_times.py; wiped on each run\n", encoding="utf-8")


def logprob_evaluate(ctx: Any, name: str, model: Any, split: str, data: Any, sets: tuple[str, ...]) -> Any:
    """``--skip-eval`` fallback: acc = argmax_j log p(choice_j | prompt) == label, without lm-eval."""
    import torch

    from mergeline.evaluate import load_causal_lm
    from mergeline.finetune.batching import choice_logprobs, read_records
    from mergeline.pipeline.records import Evaluation

    p = ctx.params
    loaded, tokenizer = load_causal_lm(ctx.root / model.path, ctx.device)
    metrics = {}
    for task in sets:
        records = read_records(ctx.root / data.split(task, split).path)
        scores = choice_logprobs(loaded, tokenizer, records, p.evaluate.max_length, batch_size=p.evaluate.batch_size)
        hits = [int(torch.argmax(s)) == r["label"] for s, r in zip(scores, records)]
        metrics[task] = sum(hits) / len(hits)
    del loaded
    return Evaluation(name=name, split=split, metrics=metrics)


class TimedCalls:
    """The walk's executor here: each call in this process, timed on the clock under its stage (or step)."""

    def __init__(self, ctx: Any, clock: Clock, evaluate: Callable[..., Any] | None) -> None:
        self.ctx, self.clock, self.evaluate = ctx, clock, evaluate

    def run(self, calls: Any) -> list[Any]:
        records = []
        for call in calls:
            # rows as before the table: fine-tune per mode, evaluate per split
            name = {"fine-tune": lambda: f"fine-tune[{call.args[0].mode}]",
                    "evaluate": lambda: f"evaluate[{call.args[2]}]"}.get(call.step.name, lambda: call.step.name)()
            fn = self.evaluate if call.step.name == "evaluate" and self.evaluate else call.step.fn
            with self.clock(name, call.label):
                records.append(fn(self.ctx, *call.args))
        return records


def run(ctx: Any, clock: Clock, evaluate: Callable[..., Any] | None) -> dict[str, Any]:
    """The pipeline's own stage table, walked in this process up to evaluation, each call timed."""
    from mergeline.pipeline.walker import walk

    if ctx.device.startswith("cuda"):
        import torch

        with clock("cuda-init"):  # first allocation; the context itself started in environment()
            torch.zeros(1, device=ctx.device)
    exp = walk(ctx, TimedCalls(ctx, clock, evaluate), until="evaluate")
    scores = exp.scores
    return {
        "n_variants": len(exp.merged),
        "selection": {"best_per_method": scores.selection.best_per_method, "ranking": list(scores.selection.ranking),
                      "by": scores.selection.by},
        "base_metrics": {s: scores.reference["base"][s].metrics for s in ("validation", "test")},
        "test_rows": scores.test_rows,
        "finetune_dtype": sorted({str(ck.meta.get("finetune", {}).get("dtype", "float32"))
                                  for ck in exp.checkpoints.values()}),
        # where a fine-tune's time goes (TaLoS mask search, steps, save), as the library reports it
        "finetune_detail": {fit.label: {k: round(v, 3) for k, v in ck.meta.items()
                                        if isinstance(v, float) and (k.endswith("seconds") or k.endswith("per_step"))}
                            for fit, ck in exp.checkpoints.items()},
    }


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "host": platform.node(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        import lm_eval  # noqa: F401

        from importlib.metadata import version

        env["lm_eval"] = version("lm_eval")
    except ImportError:
        env["lm_eval"] = None
    return env


def table(result: dict[str, Any], other: dict[str, Any] | None) -> str:
    """Markdown: one row per stage in run order, then the total; with ``other``, its seconds and the ratio."""
    dev = result["device"]
    total = result["total_seconds"]
    if other is None:
        lines = [f"| stage | calls | {dev} s | share |", "|---|---:|---:|---:|"]
    else:
        odev = other["device"] if other["device"] != dev else f"{other['device']} (other)"
        lines = [f"| stage | calls | {dev} s | {odev} s | {dev} ÷ {odev} |", "|---|---:|---:|---:|---:|"]
    rows = [*result["stages"].items(), ("total", {"calls": sum(r["calls"] for r in result["stages"].values()),
                                                  "seconds": total})]
    for stage, row in rows:
        cells = [stage, str(row["calls"]), f"{row['seconds']:.1f}"]
        if other is None:
            cells.append(f"{100 * row['seconds'] / total:.0f}%")
        else:
            theirs = other["total_seconds"] if stage == "total" else other["stages"].get(stage, {}).get("seconds")
            cells += ["–", "–"] if not theirs else [f"{theirs:.1f}", f"{row['seconds'] / theirs:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--params", default=str(ROOT / "params" / "default.yaml"), help="experiment params YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--root", help="fresh work root (default bench_out/stage_times/<device>)")
    parser.add_argument("--json", help="output JSON (default <root>/stage_times-<device>.json)")
    parser.add_argument("--compare", help="JSON of another run of this script: adds its seconds and the ratio")
    parser.add_argument("--skip-eval", action="store_true",
                        help="fallback when lm-eval cannot run: time evaluation with choice_logprobs instead")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mergeline.env import configure_offline_defaults

    configure_offline_defaults()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars
    from mergeline.errors import MergelineError
    from mergeline.params import load_params
    from mergeline.stages.common import StageContext, resolve_device

    try:
        params = load_params(args.params, args.set)
        device = resolve_device(args.device)
        other = json.loads(Path(args.compare).read_text(encoding="utf-8")) if args.compare else None
        root = Path(args.root or ROOT / "bench_out" / "stage_times" / device).resolve()
        fresh_root(root)
    except (MergelineError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ctx = StageContext(params, root, device, progress=lambda m: print(f"  {m}", flush=True))
    env = environment(device)
    print(f"device={device} {env.get('gpu', '')} params={args.params} set={args.set} root={root}", flush=True)
    clock = Clock(device)
    start = time.perf_counter()
    results = run(ctx, clock, logprob_evaluate if args.skip_eval else None)
    total = time.perf_counter() - start
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "device": device, "params_file": args.params, "overrides": args.set, "params_sha256": params.sha256(),
        "evaluator": "choice_logprobs" if args.skip_eval else "lm-eval",
        "total_seconds": round(total, 3),
        "stages": {k: {"calls": v["calls"], "seconds": round(v["seconds"], 3)} for k, v in clock.stages.items()},
        "calls": clock.calls, "env": env, "results": results,
    }
    out = Path(args.json or root / f"stage_times-{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    if other is not None and other.get("params_sha256") != result["params_sha256"]:
        print("note: the compared run used different params (params_sha256 differs)")
    print(table(result, other))
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
