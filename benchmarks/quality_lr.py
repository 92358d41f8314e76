"""Learning-rate sweep for the quality benchmark's experts, on validation (issue 13).

    python3 benchmarks/quality_lr.py --params params/quality-strong.yaml --lrs 2e-5 5e-5 1e-4 \
        --out /tmp/qlr --workers 4 --chosen /tmp/quality-chosen.yaml [--export $OUT]
    .venv/bin/python benchmarks/quality_lr.py --params params/quality-strong.yaml --out <dir with lr_sweep.json> \
        --report-only [--no-mlflow]

For each lr: a copy of the params with ``finetune.lr`` = lr (and ``talos.lr`` at the file's TaLoS /
full ratio), only TA at λ = 1 to merge and no TaLoS, LATA or negation, run by ``quality.py --direct``
(one process per lr, side by side, each on ``--workers`` workers). The single-task experts are
scored on validation; the lr with the highest mean validation accuracy of the experts on their own
tasks wins, and ``--chosen`` gets the full params with that lr. Writes ``<out>/lr_sweep.json`` (and,
with ``--export``, it and each lr's seed JSON there) and ``<out>/lr_sweep.md``: the validation choice
and the test accuracies (base, experts, TA at λ = 1) with 95% Wilson intervals. ``--report-only``
re-renders that file and logs it to MLflow (run ``quality-strong:lr-sweep``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def sweep_params(params: dict[str, Any], lr: float) -> dict[str, Any]:
    """The params of one sweep point: full fine-tunes at ``lr``, TA λ = 1, nothing else."""
    out = copy.deepcopy(params)
    out["finetune"]["lr"] = lr
    out["talos"]["enabled"] = False
    out["talos"].pop("lr", None)
    out["merge"]["methods"] = {"task_arithmetic": {"lambdas": [1.0]}}
    for extra in ("lata", "negation", "analogy", "cost"):
        out["quality"][extra] = {"enabled": False}
    return out


def with_lr(params: dict[str, Any], lr: float) -> dict[str, Any]:
    """The full params at ``lr``, TaLoS's lr scaled by the same factor."""
    out = copy.deepcopy(params)
    ratio = lr / out["finetune"]["lr"]
    out["finetune"]["lr"] = lr
    if out["talos"].get("lr"):
        out["talos"]["lr"] = out["talos"]["lr"] * ratio
    return out


def sweep_row(lr: float, result: dict[str, Any]) -> dict[str, Any]:
    """One lr's numbers from its seed JSON: validation (the choice) and test (base, experts, TA at λ = 1)."""
    add = result["addition"]
    ref, control = add["reference"], result["control"]
    tasks = list(ref["single-full-validation"])
    own_val = ref["single-full-validation"]
    ta = add["methods"]["task_arithmetic"]
    correct = add.get("correct") or {}
    return {"lr": lr, "validation_own": own_val, "base_validation": {t: ref["base-validation"][t] for t in tasks},
            "test_own": {t: ref["single-full"][t] for t in tasks},
            "base_test": {t: ref["base"][t] for t in [*tasks, control]},
            "ta_test": {t: ta["test"][f"acc/{t}"] for t in tasks} | {control: ta["test"]["acc/control"]},
            "correct": {"base": correct.get("base"), "single-full": correct.get("single-full"),
                        "task_arithmetic": ta.get("correct")},
            "mean_validation_own": sum(own_val.values()) / len(own_val)}


def _test_sizes(params: dict[str, Any]) -> dict[str, int]:
    data = params["data"]
    names = [*params["tasks"], params["control"]]
    return {t: int((data.get("sizes") or {}).get(t, {}).get("test", data["n_test"])) for t in names}


def _cell(row: dict[str, Any], model: str, task: str, acc: float, n: int) -> str:
    """Wilson 95% interval, from the per-example scores where saved, else from acc × n (same k)."""
    from mergeline.stats import wilson_interval

    bits = ((row.get("correct") or {}).get(model) or {}).get(task)
    k, n = (bits.count("1"), len(bits)) if bits else (round(acc * n), n)
    low, high = wilson_interval(k, n)
    return f"{k / n:.3f} [{low:.3f}, {high:.3f}]"


def render(summary: dict[str, Any], params: dict[str, Any]) -> str:
    """Two tables: the validation choice, then test accuracy (95% Wilson intervals) at every lr."""
    rows, sizes, control = summary["rows"], _test_sizes(params), params["control"]
    tasks = list(rows[0]["validation_own"])
    val = ["| lr | " + " | ".join(f"{t} val (base)" for t in tasks) + " | mean val |", "|---" * (len(tasks) + 2) + "|"]
    for r in rows:
        val.append(f"| {r['lr']:g} | " + " | ".join(f"{r['validation_own'][t]:.3f} ({r['base_validation'][t]:.3f})"
                                                 for t in tasks) + f" | {r['mean_validation_own']:.3f} |")
    test = ["| lr | model | " + " | ".join(f"{t} (n={sizes[t]})" for t in [*tasks, control]) + " |",
            "|---" * (len(tasks) + 3) + "|"]
    for r in rows:
        for model, label, accs in (("base", "base", r.get("base_test")), ("single-full", "expert (own task)", r["test_own"]),
                                   ("task_arithmetic", "TA λ=1", r.get("ta_test"))):
            if accs:
                test.append(f"| {r['lr']:g} | {label} | " + " | ".join(
                    _cell(r, model, t, accs[t], sizes[t]) if t in accs else "–" for t in [*tasks, control]) + " |")
    return "\n".join([f"Chosen lr: {summary['chosen_lr']:g} (highest mean validation accuracy of the experts)", "",
                      *val, "", *test]) + "\n"


def log_mlflow(out: Path, params: dict[str, Any], params_file: str) -> None:
    import mlflow

    from mergeline.tracking import configure_tracking

    summary = json.loads((out / "lr_sweep.json").read_text())
    configure_tracking(experiment=params["experiment"])
    with mlflow.start_run(run_name="quality-strong:lr-sweep"):
        mlflow.set_tags({"mergeline.benchmark": "quality-lr-sweep", "mergeline.params_file": params_file})
        mlflow.log_param("chosen_lr", summary["chosen_lr"])
        for r in summary["rows"]:
            step = int(round(r["lr"] * 1e6))  # MLflow steps are integers: lr in units of 1e-6
            mlflow.log_metric("validation_own_mean", r["mean_validation_own"], step=step)
            for t, acc in r["test_own"].items():
                mlflow.log_metric(f"test_own.{t}", acc, step=step)
        mlflow.log_artifact(str(out / "lr_sweep.json"))
        mlflow.log_artifact(str(out / "lr_sweep.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 5e-5, 1e-4])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=float("inf"))
    parser.add_argument("--chosen", default="quality-chosen.yaml", help="write the full params with the chosen lr here")
    parser.add_argument("--export")
    parser.add_argument("--report-only", action="store_true",
                        help="render <out>/lr_sweep.json and log it to MLflow (--no-mlflow: do not); runs nothing")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    out = Path(args.out)
    if args.report_only:
        (out / "lr_sweep.md").write_text(render(json.loads((out / "lr_sweep.json").read_text()), params))
        print((out / "lr_sweep.md").read_text())
        if not args.no_mlflow:
            log_mlflow(out, params, args.params)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for lr in args.lrs:
        folder = out / f"lr{lr:g}"
        folder.mkdir(exist_ok=True)
        path = folder / "params.yaml"
        path.write_text(yaml.safe_dump(sweep_params(params, lr), sort_keys=False), encoding="utf-8")
        cmd = [sys.executable, str(HERE / "quality.py"), "--params", str(path), "--seeds", str(args.seed),
               "--out", str(folder), "--direct", "--workers", str(args.workers), "--deadline", str(args.deadline)]
        procs.append(subprocess.Popen(cmd, stdout=open(folder / "log.txt", "w"), stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait()
    rows = []
    for lr in args.lrs:
        path = out / f"lr{lr:g}" / f"seed{args.seed}" / "quality.json"
        if not path.is_file():
            print(f"lr {lr:g}: no result (see {path.parent.parent / 'log.txt'})")
            continue
        rows.append(sweep_row(lr, json.loads(path.read_text())))
        if args.export:  # the whole result (per-example scores included) comes back too
            Path(args.export).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(args.export) / f"lr{lr:g}-seed{args.seed}.json")
    if not rows:
        print("error: no sweep point finished", file=sys.stderr)
        return 1
    best = max(rows, key=lambda r: (r["mean_validation_own"], -r["lr"]))
    Path(args.chosen).write_text(yaml.safe_dump(with_lr(params, best["lr"]), sort_keys=False), encoding="utf-8")
    summary = {"params": args.params, "seed": args.seed, "rows": rows, "chosen_lr": best["lr"]}
    (out / "lr_sweep.json").write_text(json.dumps(summary, indent=1))
    if args.export:
        Path(args.export).mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "lr_sweep.json", Path(args.export) / "lr_sweep.json")
    (out / "lr_sweep.md").write_text(render(summary, params))
    print((out / "lr_sweep.md").read_text())
    print(f"chosen lr: {best['lr']:g} -> {args.chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
