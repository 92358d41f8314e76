"""Wall time of each pipeline step of one experiment, as ``mergeline run`` recorded it, for one or more
worker counts.

    .venv/bin/python benchmarks/stage_times.py [--device cuda] [--params params/default.yaml]
        [--set finetune.steps=2 ...] [--workers 1 [4 ...]] [--repeat 1] [--root bench_out/stage_times/DEVICE]
    .venv/bin/python benchmarks/stage_times.py --project DIR   # a run already made in DIR: its table only

Each run is ``mergeline run`` in a new project folder under ``--root`` (a folder that does not exist
yet or is empty; by default a new one per call under ``bench_out/stage_times/``) with its own Prefect state and
MLflow store, so every call computes instead of hitting a cache, and ``MERGELINE_MAX_WORKERS`` set to
one of ``--workers`` (default 1: a call's time is then its own, not shared with calls beside it).
With ``--repeat R`` the worker counts alternate R times, so a shared machine's load falls on all of
them. Nothing here times a step: every call of every step is read back from the run's MLflow records
with its ``stage_seconds``.

For each worker count it prints a markdown table: per step, its calls and the sum of their seconds
(fine-tune per mode and evaluate per split on rows of their own), in the order of the pipeline's
stage table, median over the rounds. With two or more worker counts a last table compares them per
stage by span (first call's start to last call's end: what running calls together shortens), then
the pipeline flow's and the ``mergeline run`` process's wall time, each with the ratio first ÷ last
count. Exit status 1 when the runs printed different results tables. Every call stays in each
project's MLflow store under ``--root`` (read one again with ``--project``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mergeline.env import WORKERS_ENV  # noqa: E402
from mergeline.errors import MergelineError  # noqa: E402
from mergeline.params import ExperimentParams, load_params  # noqa: E402
from mergeline.pipeline.table import STEPS  # noqa: E402
from mergeline.tracking.mlflow_setup import default_tracking_uri  # noqa: E402

SPLIT_ROWS = ("fine-tune", "evaluate")  # labels end in the mode (task-full) or the split (variant-test)


@dataclass(frozen=True)
class Call:
    """One recorded call of a step: its MLflow times (seconds since the epoch) and its own seconds."""

    stage: str
    step: str
    label: str
    start: float
    end: float
    seconds: float


@dataclass(frozen=True)
class Recorded:
    """One pipeline run as MLflow holds it: the parent run's wall time and its calls, oldest first;
    ``process_seconds`` is the ``mergeline run`` command's own wall time (None for a run read back)."""

    pipeline_seconds: float
    calls: list[Call]
    process_seconds: float | None = None


def run_params(params_file: str, overrides: list[str]) -> tuple[ExperimentParams, dict[str, Any]]:
    """The validated params, and their YAML form with a local ``base_model`` made absolute, so they hold
    from any project folder (a missing one is the pipeline's error, in the first run's message)."""
    checked = load_params(params_file, overrides)
    params = checked.model_dump(mode="json", by_alias=True)
    if (Path.cwd() / checked.base_model).exists():
        params["base_model"] = str((Path.cwd() / checked.base_model).resolve())
    return checked, params


def run_pipeline(project: Path, params: dict[str, Any], workers: int) -> float:
    """``mergeline run`` in the new folder ``project`` (its own Prefect state and MLflow store, so no
    call is a cache hit), ``workers`` calls at once; its wall time in seconds, its stdout in stdout.txt."""
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, WORKERS_ENV: str(workers), "PREFECT_HOME": str(project / ".prefect"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(project / ".prefect" / "results"),
           "MLFLOW_TRACKING_URI": default_tracking_uri(project)}
    # a shared Prefect server or work pool would add other runs' load and caches to the timings
    env.pop("PREFECT_API_URL", None)
    env.pop("MERGELINE_WORK_POOL", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mergeline.cli", "run", "--params", "params.yaml"], cwd=project,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise MergelineError(f"mergeline run in {project} (workers={workers}) failed:\n{done.stderr[-3000:]}")
    (project / "stdout.txt").write_text(done.stdout, encoding="utf-8")
    return seconds


def results_table(project: Path) -> str:
    """The results table the run printed (what two runs must agree on); empty for a run made elsewhere."""
    stdout = project / "stdout.txt"
    return stdout.read_text(encoding="utf-8").split("registered")[0].strip() if stdout.is_file() else ""


def recorded(uri: str, process_seconds: float | None = None) -> Recorded:
    """The latest pipeline run in the MLflow store at ``uri`` and its step calls. Every call is a nested
    run of the parent ``pipeline:<experiment>``, tagged ``mergeline.stage`` and ``mergeline.step``, named
    ``<step>:<label>``; registration runs carry no step tag and are left out."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10_000)
    parents = [r for r in runs if r.info.run_name.startswith("pipeline:") and r.info.end_time]
    if not parents:
        raise MergelineError(f"{uri}: no finished pipeline run")
    parent = max(parents, key=lambda r: r.info.start_time)
    calls = [Call(r.data.tags["mergeline.stage"], r.data.tags["mergeline.step"], r.info.run_name.split(":", 1)[-1],
                  r.info.start_time / 1000, r.info.end_time / 1000, r.data.metrics.get("stage_seconds", 0.0))
             for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
             and "mergeline.step" in r.data.tags and r.info.end_time]
    return Recorded((parent.info.end_time - parent.info.start_time) / 1000, sorted(calls, key=lambda c: c.start),
                    process_seconds)


def row_of(step: str, label: str) -> str:
    return f"{step}[{label.rsplit('-', 1)[-1]}]" if step in SPLIT_ROWS else step


def stage_rows(run: Recorded) -> dict[str, dict[str, float]]:
    """Row -> calls and summed seconds, in the stage table's step order."""
    rows: dict[str, dict[str, float]] = {}
    order = list(STEPS)
    for call in sorted(run.calls, key=lambda c: order.index(c.step)):  # stable: a step's rows in run order
        row = rows.setdefault(row_of(call.step, call.label), {"calls": 0, "seconds": 0.0})
        row["calls"] += 1
        row["seconds"] = round(row["seconds"] + call.seconds, 3)
    return rows


def stage_spans(run: Recorded) -> dict[str, dict[str, float]]:
    """Stage -> its calls and the span from its first call's start to its last call's end."""
    spans: dict[str, dict[str, float]] = {}
    for call in run.calls:
        span = spans.setdefault(call.stage, {"calls": 0, "start": call.start, "end": call.end})
        span["calls"] += 1
        span["start"], span["end"] = min(span["start"], call.start), max(span["end"], call.end)
    return {stage: {"calls": s["calls"], "span": round(s["end"] - s["start"], 3)} for stage, s in spans.items()}


def summary(runs: list[Recorded]) -> dict[str, Any]:
    """One worker count's runs: per row and per stage, the median over the runs."""
    def median(values: list[float | None]) -> float | None:
        return None if None in values else round(statistics.median(values), 3)  # type: ignore[type-var]

    rows, spans = [stage_rows(r) for r in runs], [stage_spans(r) for r in runs]
    # same params every round, so every run has the first one's rows and stages
    stages = {row: {"calls": cells["calls"], "seconds": median([r[row]["seconds"] for r in rows])}
              for row, cells in rows[0].items()}
    return {
        "total_seconds": round(sum(s["seconds"] for s in stages.values()), 3), "stages": stages,
        "spans": {stage: {"calls": cells["calls"], "span": median([s[stage]["span"] for s in spans])}
                  for stage, cells in spans[0].items()},
        "pipeline_seconds": median([r.pipeline_seconds for r in runs]),
        "process_seconds": median([r.process_seconds for r in runs]),
    }


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    return ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1),
            *("| " + " | ".join(row) + " |" for row in rows)]


def stage_table(result: dict[str, Any], dev: str) -> str:
    """One worker count: one row per step in run order, then the total; then the flow's and the
    process's wall time."""
    total = result["total_seconds"]
    calls = sum(int(r["calls"]) for r in result["stages"].values())
    rows = []
    for stage, row in [*result["stages"].items(), ("total", {"calls": calls, "seconds": total})]:
        share = f"{100 * row['seconds'] / total:.0f}%" if total else "–"
        rows.append([stage, str(row["calls"]), f"{row['seconds']:.1f}", share])
    process = result["process_seconds"]
    walls = f"pipeline flow (parent MLflow run): {result['pipeline_seconds']:.1f} s" \
        + ("" if process is None else f"; `mergeline run` process: {process:.1f} s")
    return "\n".join(markdown(["stage", "calls", f"{dev} s", "share"], rows)) + f"\n\n{walls}"


def workers_table(results: dict[int, dict[str, Any]]) -> str:
    """Per stage, the median span for each worker count, then the flow's and the process's wall time;
    the last column the ratio of the first count's time to the last's."""
    counts = list(results)
    first, last = results[counts[0]], results[counts[-1]]

    def ratio(mine: float | None, theirs: float | None) -> str:
        return "–" if not (mine and theirs) else f"{mine / theirs:.2f}"

    rows = []
    for stage, cells in first["spans"].items():
        spans = [results[w]["spans"].get(stage, {}).get("span") for w in counts]
        rows.append([stage, str(cells["calls"]), *(f"{s:.1f}" for s in spans), ratio(spans[0], spans[-1])])
    for label, key in (("pipeline flow", "pipeline_seconds"), ("`mergeline run` (process)", "process_seconds")):
        walls = [results[w][key] for w in counts]
        rows.append([label, "", *("–" if s is None else f"{s:.1f}" for s in walls), ratio(first[key], last[key])])
    head = ["stage (span)", "calls", *(f"workers={w} s" for w in counts), f"{counts[0]} ÷ {counts[-1]}"]
    return "\n".join(markdown(head, rows))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), help="the run's device (--set device=...)")
    parser.add_argument("--params", default=str(ROOT / "params" / "default.yaml"), help="experiment params YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--root", help="new or empty folder for the projects "
                        "(default bench_out/stage_times/<device>-<time>)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="stage calls at once (MERGELINE_MAX_WORKERS), one run per count")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count, alternating")
    parser.add_argument("--project", help="read the latest run of this project's MLflow store instead of running")
    args = parser.parse_args(argv)
    if any(w < 1 for w in args.workers) or args.repeat < 1:
        parser.error("--workers and --repeat: whole numbers, at least 1")
    if args.project and (len(args.workers) > 1 or args.repeat > 1):
        parser.error("--project reads one run: no second --workers count, no --repeat")
    return args


def measure(args: argparse.Namespace) -> tuple[ExperimentParams, Path, dict[int, list[Recorded]]]:
    """Run (or, with --project, read) the pipeline; its params, the root folder and each count's runs."""
    if args.project:
        project = Path(args.project).resolve()
        checked = load_params(str(project / "params.yaml"), [])
        return checked, project.parent, {args.workers[0]: [recorded(default_tracking_uri(project))]}
    overrides = [*args.set, *([f"device={args.device}"] if args.device else [])]
    checked, params = run_params(args.params, overrides)  # every run gets the same validated params
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(args.root or ROOT / "bench_out" / "stage_times" / f"{checked.device}-{stamp}").resolve()
    if root.exists() and any(root.iterdir()):  # every run must compute: nothing cached from an earlier call
        raise MergelineError(f"--root {root}: not empty; give a new folder")
    print(f"device={checked.device} params={args.params} set={args.set} workers={args.workers} "
          f"repeat={args.repeat} root={root} cpus={os.cpu_count()}", flush=True)
    runs: dict[int, list[Recorded]] = {w: [] for w in args.workers}
    for round_ in range(args.repeat):
        for workers in args.workers:
            project = root / f"w{workers}-r{round_}"
            run = recorded(default_tracking_uri(project), run_pipeline(project, params, workers))
            runs[workers].append(run)
            print(f"workers={workers} round {round_}: {run.process_seconds:.1f} s (pipeline flow "
                  f"{run.pipeline_seconds:.1f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    return checked, root, runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checked, root, runs = measure(args)
    except (MergelineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = {w: summary(r) for w, r in runs.items()}
    projects = [Path(args.project).resolve()] if args.project else \
        [root / f"w{w}-r{i}" for w in runs for i in range(args.repeat)]
    tables = [results_table(p) for p in projects]
    for workers, result in results.items():
        print(f"\n### workers={workers}\n\n{stage_table(result, checked.device)}")
    if len(results) > 1:
        print("\n### worker counts compared (median of each count's runs)\n\n" + workers_table(results))
    same = len(set(tables)) == 1
    print(f"\nresults tables identical across runs: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
