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
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MARKER = ".pipeline_workers"  # a --root holding this was made by this script and may be wiped


def fresh(folder: Path) -> None:
    from mergeline.errors import MergelineError

    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise MergelineError(f"--root {folder}: not empty and not made by pipeline_workers.py; pick a new folder")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by benchmarks/pipeline_workers.py; wiped on each run\n", encoding="utf-8")


def run_once(project: Path, params: dict[str, Any], workers: int) -> float:
    """``mergeline run`` in a new project folder; its wall time in seconds."""
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "MERGELINE_MAX_WORKERS": str(workers), "PREFECT_HOME": str(project / ".prefect"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(project / ".prefect" / "results"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MERGELINE_WORK_POOL", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mergeline.cli", "run", "--params", "params.yaml"], cwd=project,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"mergeline run (workers={workers}) failed:\n{done.stderr[-3000:]}")
    (project / "stdout.txt").write_text(done.stdout, encoding="utf-8")
    return seconds


def stage_times(project: Path) -> dict[str, Any]:
    """The run's timings from its MLflow store: the parent's wall time, and per stage span, call seconds, calls."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    parent = next(r for r in runs if r.info.run_name.startswith("pipeline:"))
    stages: dict[str, dict[str, Any]] = {}
    for run in runs:
        stage = run.data.tags.get("mergeline.stage")
        if run.info.run_id == parent.info.run_id or not stage or stage == "register":
            continue
        row = stages.setdefault(stage, {"start": run.info.start_time, "end": run.info.end_time, "calls": 0,
                                        "call_seconds": 0.0})
        row["start"], row["end"] = min(row["start"], run.info.start_time), max(row["end"], run.info.end_time)
        row["calls"] += 1
        row["call_seconds"] += run.data.metrics.get("stage_seconds", 0.0)
    order = sorted(stages, key=lambda s: stages[s]["start"])
    return {"pipeline": (parent.info.end_time - parent.info.start_time) / 1000,
            "stages": {s: {"span": (stages[s]["end"] - stages[s]["start"]) / 1000, "calls": stages[s]["calls"],
                           "call_seconds": stages[s]["call_seconds"]} for s in order}}


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
    from mergeline.errors import MergelineError
    from mergeline.params import load_params

    try:
        checked = load_params(args.params, args.set)
        if any(w < 1 for w in args.workers) or args.repeat < 1:
            raise MergelineError("--workers and --repeat: whole numbers, at least 1")
        base = Path(checked.base_model)
        if (base.is_absolute() or checked.base_model.startswith(".") or "/" in checked.base_model) \
                and not (base.resolve() / "config.json").is_file():
            raise MergelineError(f"base_model {checked.base_model}: no model folder there; give one with "
                                 "--set base_model=PATH (params/tiny.yaml's is built by the tests)")
        root = Path(args.root).resolve()
        fresh(root)
    except MergelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # every run gets the same validated params, with paths that hold from its own folder
    params = checked.model_dump(mode="json", by_alias=True)
    if (Path.cwd() / checked.base_model).exists():
        params["base_model"] = str((Path.cwd() / checked.base_model).resolve())
    results: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
    print(f"params={args.params} set={args.set} workers={args.workers} repeat={args.repeat} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}", flush=True)
    for round_ in range(args.repeat):
        for workers in args.workers:
            project = root / f"w{workers}-r{round_}"
            wall = run_once(project, params, workers)
            timing = {**stage_times(project), "wall": wall}
            results[workers].append(timing)
            print(f"workers={workers} round {round_}: {wall:.1f} s (pipeline flow {timing['pipeline']:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    tables = {w: (root / f"w{w}-r0" / "stdout.txt").read_text(encoding="utf-8").split("registered")[0].strip()
              for w in args.workers}
    same = len(set(tables.values())) == 1
    print(table(results))
    print(f"results tables identical across worker counts: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
