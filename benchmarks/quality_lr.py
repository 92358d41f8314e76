"""Learning-rate sweep for the quality benchmark's experts, on validation (issue 13).

    python3 benchmarks/quality_lr.py --params params/quality-strong.yaml --lrs 1e-5 3e-5 1e-4 \
        --out /tmp/qlr --workers 4 --chosen /tmp/quality-chosen.yaml [--export $OUT]

For each lr: a copy of the params with ``finetune.lr`` = lr (and ``talos.lr`` at the file's TaLoS /
full ratio), only TA at λ = 1 to merge and no TaLoS, LATA or negation, run by ``quality.py --direct``
(one process per lr, side by side, each on ``--workers`` workers). The single-task experts are
scored on validation; the lr with the highest mean validation accuracy of the experts on their own
tasks wins, and ``--chosen`` gets the full params with that lr. Prints one table; writes
``<out>/lr_sweep.json`` (and to ``--export``).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=float("inf"))
    parser.add_argument("--chosen", required=True, help="write the full params with the chosen lr here")
    parser.add_argument("--export")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    out = Path(args.out)
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
        ref = json.loads(path.read_text())["addition"]["reference"]
        tasks = list(ref["single-full-validation"])
        own_val = ref["single-full-validation"]
        rows.append({"lr": lr, "validation_own": own_val, "base_validation": {t: ref["base-validation"][t] for t in tasks},
                     "test_own": {t: ref["single-full"][t] for t in tasks},
                     "mean_validation_own": sum(own_val.values()) / len(own_val)})
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
    tasks = list(rows[0]["validation_own"])
    print("| lr | " + " | ".join(f"{t} val (base)" for t in tasks) + " | mean val | " +
          " | ".join(f"{t} test" for t in tasks) + " |")
    print("|---" * (2 * len(tasks) + 2) + "|")
    for r in rows:
        print(f"| {r['lr']:g} | " + " | ".join(f"{r['validation_own'][t]:.3f} ({r['base_validation'][t]:.3f})"
                                            for t in tasks) +
              f" | {r['mean_validation_own']:.3f} | " + " | ".join(f"{r['test_own'][t]:.3f}" for t in tasks) + " |")
    print(f"chosen lr: {best['lr']:g} -> {args.chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
