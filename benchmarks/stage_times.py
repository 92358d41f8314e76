"""Wall time of each pipeline step of one experiment on one device, as ``mergeline run`` recorded it.

    .venv/bin/python benchmarks/stage_times.py --device cuda [--params params/default.yaml]
        [--set finetune.steps=2 ...] [--root bench_out/stage_times/cuda] [--json OUT.json]
        [--compare OTHER.json] [--workers 1]
    .venv/bin/python benchmarks/stage_times.py --project DIR   # a run already made in DIR: its table only

Runs ``mergeline run`` (``--set device=...``) in a fresh ``--root`` folder (deleted and rebuilt on each
run; a folder this script did not make is refused) with its own Prefect state and MLflow store, so
every call computes instead of hitting a cache, ``--workers`` calls at once (default 1: a call's time
is then its own, not shared with calls beside it). Then reads the run back from MLflow
(``_pipeline_runs.recorded``): every call of every step with its ``stage_seconds``. A step's time is
the sum of its calls' (fine-tune per mode and evaluate per split on rows of their own), in the order
of the pipeline's stage table.

Prints a markdown table (stage, calls, seconds, share of the total) and writes JSON (``--json``,
default ``<root>/stage_times-<device>.json``) with every call, the environment (GPU name, library
versions, load average) and the run's results table, so two runs can be checked to have done the
same work. ``--compare OTHER.json`` adds the other run's seconds and the ratio this ÷ other per row
(run the CPU side with ``--compare`` on the CUDA JSON: the ratio is the GPU's speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _pipeline_runs import Recorded, fresh, recorded, results_table, run_params, run_pipeline, tracking_uri  # noqa: E402
from mergeline.errors import MergelineError  # noqa: E402
from mergeline.params import load_params  # noqa: E402
from mergeline.pipeline.table import STEPS  # noqa: E402

SPLIT_ROWS = ("fine-tune", "evaluate")  # labels end in the mode (task-full) or the split (variant-test)


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


def environment(device: str) -> dict[str, Any]:
    def have(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "cpu_count": os.cpu_count(),
                           "loadavg": [round(x, 2) for x in os.getloadavg()],
                           **{p: have(p) for p in ("torch", "transformers", "lm_eval", "prefect", "mlflow")}}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def table(result: dict[str, Any], other: dict[str, Any] | None) -> str:
    """Markdown: one row per step in run order, then the total; with ``other``, its seconds and the ratio."""
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
    return "\n".join(lines) + f"\n\npipeline flow (parent MLflow run): {result['pipeline_seconds']:.1f} s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), help="the run's device (--set device=...)")
    parser.add_argument("--params", default=str(ROOT / "params" / "default.yaml"), help="experiment params YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--root", help="fresh project folder (default bench_out/stage_times/<device>)")
    parser.add_argument("--workers", type=int, default=1, help="stage calls at once (MERGELINE_MAX_WORKERS)")
    parser.add_argument("--project", help="read the latest run of this project's MLflow store instead of running")
    parser.add_argument("--json", help="output JSON (default <root>/stage_times-<device>.json)")
    parser.add_argument("--compare", help="JSON of another run of this script: adds its seconds and the ratio")
    args = parser.parse_args(argv)
    if not args.project and not args.device:
        parser.error("give --device to run the pipeline, or --project DIR to read a run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        other = json.loads(Path(args.compare).read_text(encoding="utf-8")) if args.compare else None
        if args.project:
            project = Path(args.project).resolve()
            checked = load_params(str(project / "params.yaml"), [])
            device = checked.device
        else:
            device = args.device
            checked, params = run_params(args.params, [*args.set, f"device={device}"])
            root = Path(args.root or ROOT / "bench_out" / "stage_times" / device).resolve()
            fresh(root, "stage_times")
            project = root / "project"
            print(f"device={device} params={args.params} set={args.set} root={root}", flush=True)
            run_pipeline(project, params, args.workers)
        run = recorded(tracking_uri(project))
    except (MergelineError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stages = stage_rows(run)
    result = {
        "device": device, "params_file": args.params, "overrides": args.set, "params_sha256": checked.sha256(),
        "workers": args.workers, "total_seconds": round(sum(r["seconds"] for r in stages.values()), 3),
        "pipeline_seconds": round(run.pipeline_seconds, 3), "stages": stages,
        "calls": [{"step": c.step, "label": c.label, "seconds": c.seconds} for c in run.calls],
        "env": environment(device), "results_table": results_table(project),
    }
    out = Path(args.json or project.parent / f"stage_times-{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if other is not None and other.get("params_sha256") != result["params_sha256"]:
        print("note: the compared run used different params (params_sha256 differs)")
    print(table(result, other))
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
