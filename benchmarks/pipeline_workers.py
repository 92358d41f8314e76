"""Wall time of one experiment with its independent stage calls one at a time vs N at once.

    .venv/bin/python benchmarks/pipeline_workers.py --params params/tiny.yaml --set base_model=PATH \\
        [--workers 1 4] [--repeat 1] [--root bench_out/pipeline_workers]

Each run is ``mergeline run`` in a fresh project folder (its own Prefect state and MLflow store, so
nothing is a cache hit) with ``MERGELINE_MAX_WORKERS`` set to one of ``--workers``; with
``--repeat R`` the worker counts alternate R times, so a shared machine's load falls on both. The
timings are the pipeline run's own, read back from MLflow: per stage, the span from its first call's
start to its last call's end (what overlapping shortens) and the sum of its calls' ``stage_seconds``.
Prints one markdown table, the last column the ratio of the first worker count's time to the last's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _pipeline_runs import Recorded, fresh, recorded, results_table, run_params, run_pipeline, tracking_uri  # noqa: E402
from mergeline.errors import MergelineError  # noqa: E402


def stage_times(run: Recorded) -> dict[str, Any]:
    """Per stage (registration left out): the span from its first call's start to its last call's end,
    its calls and their summed ``stage_seconds``; with the pipeline flow's wall time."""
    stages: dict[str, dict[str, Any]] = {}
    for call in run.calls:
        row = stages.setdefault(call.stage, {"start": call.start, "end": call.end, "calls": 0, "call_seconds": 0.0})
        row["start"], row["end"] = min(row["start"], call.start), max(row["end"], call.end)
        row["calls"] += 1
        row["call_seconds"] += call.seconds
    return {"pipeline": run.pipeline_seconds,
            "stages": {s: {"span": r["end"] - r["start"], "calls": r["calls"], "call_seconds": r["call_seconds"]}
                       for s, r in stages.items()}}


def table(results: dict[int, list[dict[str, Any]]]) -> str:
    """Markdown: per stage, the median span (and call seconds) for each worker count, then the ratio."""
    counts = list(results)
    first, last = counts[0], counts[-1]

    def median(workers: int, pick: Any) -> float:
        return statistics.median(pick(r) for r in results[workers])

    head = ["stage", "calls", *[f"workers={w}: span s (calls s)" for w in counts], f"{first} ÷ {last}"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(counts) + 1)]
    for stage in results[first][0]["stages"]:
        spans = {w: median(w, lambda r: r["stages"][stage]["span"]) for w in counts}
        calls_s = {w: median(w, lambda r: r["stages"][stage]["call_seconds"]) for w in counts}
        cells = [stage, str(results[first][0]["stages"][stage]["calls"]),
                 *[f"{spans[w]:.1f} ({calls_s[w]:.1f})" for w in counts], f"{spans[first] / spans[last]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, key in (("pipeline flow", "pipeline"), ("`mergeline run` (process)", "wall")):
        values = {w: median(w, lambda r: r[key]) for w in counts}
        lines.append("| " + " | ".join([label, "", *[f"{values[w]:.1f}" for w in counts],
                                        f"{values[first] / values[last]:.2f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params" / "tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="worker counts, first ÷ last")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count, alternating")
    parser.add_argument("--root", default=str(ROOT / "bench_out" / "pipeline_workers"))
    args = parser.parse_args(argv)
    try:
        if any(w < 1 for w in args.workers) or args.repeat < 1:
            raise MergelineError("--workers and --repeat: whole numbers, at least 1")
        _, params = run_params(args.params, args.set)  # every run gets the same validated params
        root = Path(args.root).resolve()
        fresh(root, "pipeline_workers")
    except MergelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
    print(f"params={args.params} set={args.set} workers={args.workers} repeat={args.repeat} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}", flush=True)
    for round_ in range(args.repeat):
        for workers in args.workers:
            project = root / f"w{workers}-r{round_}"
            wall = run_pipeline(project, params, workers)
            timing = {**stage_times(recorded(tracking_uri(project))), "wall": wall}
            results[workers].append(timing)
            print(f"workers={workers} round {round_}: {wall:.1f} s (pipeline flow {timing['pipeline']:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    tables = {w: results_table(root / f"w{w}-r0") for w in args.workers}
    same = len(set(tables.values())) == 1
    print(table(results))
    print(f"results tables identical across worker counts: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
