"""Quality benchmark, encoder family (issue 13): all-MiniLM-L6-v2, frozen heads, addition and negation.

    python3 benchmarks/quality_encoder.py --params params/quality-encoder.yaml --seeds 0 1 2 \
        --out /tmp/enc --device cuda [--export $OUT]
    .venv/bin/python benchmarks/quality_encoder.py --params params/quality-encoder.yaml --seeds 0 1 2 \
        --out bench_out/quality-encoder --report-only [--no-mlflow]

Per seed (``_quality_encoder`` has the protocol): fit one frozen linear head per task on the base
encoder, fine-tune one expert per task through its head (lr chosen on validation), then merge the
experts' encoders with ``mergeline.merge.engine.run_merge`` (TA, TIES, DARE-TIES, MetaGPT over the params'
grids; best variant per method by validation mean normalized accuracy, then scored on test) and
negate each task vector (θ0 − λτ_t). Writes ``<out>/seed<N>/encoder.json`` (every accuracy and the
per-example correctness), ``<out>/encoder.md`` (tables with 95% intervals and McNemar tests against
TA) and, with ``--report-only``, logs them to MLflow (the params' ``experiment``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(1, str(HERE.parent))

from _quality_encoder_tables import render  # noqa: E402


def _acc(bits: str) -> float:
    return bits.count("1") / len(bits)


class Seed:
    """One seed's models, data and heads on one device."""

    def __init__(self, params: dict[str, Any], seed: int, work: Path, device: str) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from _quality_encoder import build_data, embed_all, encoder_dir, fit_head
        from mergeline.env import configure_offline_defaults

        configure_offline_defaults()
        torch.manual_seed(seed)
        self.params, self.seed, self.work, self.device = params, seed, work, device
        self.tasks = list(params["tasks"])
        path = encoder_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.base = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.data, classes = build_data(params["tasks"], work / "data", seed, self.tokenizer, device,
                                        params["max_length"])
        self.heads = {t: fit_head(embed_all(self.base, self.data[t]["train"]), self.data[t]["train"].labels,
                                  classes[t]) for t in self.tasks}
        self.base_dir = work / "models" / "base"
        self.base.save_pretrained(self.base_dir)

    def score(self, encoder, split: str, tasks: list[str] | None = None) -> dict[str, str]:
        from _quality_encoder import score

        return {t: score(encoder, self.heads[t], self.data[t][split]) for t in tasks or self.tasks}

    def load(self, folder: Path):
        import torch
        from transformers import AutoModel

        return AutoModel.from_pretrained(folder, dtype=torch.float32).to(self.device).eval()

    def merge(self, name: str, method: str, models: dict[str, float], lam: float | None,
              density: float | None) -> Path:
        """``run_merge`` of the experts ``{task: weight}`` over the base; returns the merged folder."""
        from mergeline.merge.config import MergeConfig
        from mergeline.merge.engine import run_merge

        entries = []
        for task, weight in models.items():
            per_model: dict[str, Any] = {} if method == "metagpt" else {"weight": weight}
            if density is not None:
                per_model["density"] = density
            entries.append({"model": str(self.work / "models" / task), "parameters": per_model})
        parameters: dict[str, Any] = {} if lam is None else {"lambda": lam}
        if method == "dare_ties":
            parameters["seed"] = self.seed
        config = MergeConfig(merge_method=method, base_model=str(self.base_dir), models=entries,
                             parameters=parameters, dtype="float32", seed=self.seed)
        out = self.work / "merged" / name
        shutil.rmtree(out, ignore_errors=True)
        run_merge(config, out, device=self.device)
        return out


def train_experts(s: Seed) -> dict[str, Any]:
    """Per task: fine-tune at each lr from the base, keep the best on validation; save it."""
    from _quality_encoder import finetune

    p = s.params["finetune"]
    out: dict[str, Any] = {}
    for task in s.tasks:
        tried = {}
        best = None
        for lr in p["lrs"]:
            encoder = copy.deepcopy(s.base)
            losses = finetune(encoder, s.heads[task], s.data[task]["train"], steps=p["steps"],
                              batch=p["batch_size"], lr=lr, seed=s.seed)
            val = _acc(s.score(encoder, "validation", [task])[task])
            tried[f"{lr:g}"] = {"validation": val, "last_loss": losses[-1]}
            if best is None or val > best[0]:
                best = (val, lr, encoder)
        assert best is not None
        best[2].save_pretrained(s.work / "models" / task)
        # an expert is scored on its own task only (normalized accuracy divides by that)
        out[task] = {"lr": best[1], "tried": tried,
                     "correct": {split: s.score(best[2], split, [task]) for split in ("validation", "test")}}
        print(f"seed {s.seed} {task}: lr {best[1]:g}, validation {best[0]:.3f}", flush=True)
    return out


def run_addition(s: Seed, experts: dict[str, Any], base: dict[str, dict[str, str]]) -> dict[str, Any]:
    own_val = {t: _acc(experts[t]["correct"]["validation"][t]) for t in s.tasks}
    sweep, best = [], {}
    for method, grid in s.params["addition"].items():
        lambdas = grid.get("lambdas") or [None]
        for lam, density in itertools.product(lambdas, grid.get("densities") or [None]):
            name = f"{method}_l{lam}_d{density}"
            folder = s.merge(name, method, {t: 1.0 for t in s.tasks}, lam, density)
            correct = s.score(s.load(folder), "validation")
            norm = sum(_acc(correct[t]) / own_val[t] for t in s.tasks) / len(s.tasks)
            report = json.loads((folder / "merge_report.json").read_text()).get("method") or {}
            point = {"name": name, "method": method, "lambda": lam, "density": density, "norm_acc": norm,
                     "metagpt_lambdas": report.get("lambdas") if method == "metagpt" else None}
            sweep.append(point)
            key = (-norm, abs(lam or 0.0), name)
            if method not in best or key < best[method][0]:
                best[method] = (key, point, folder)
    methods = {}
    for method, (_, point, folder) in best.items():
        methods[method] = {**point, "correct": s.score(s.load(folder), "test")}
    for folder in (s.work / "merged").iterdir():
        shutil.rmtree(folder, ignore_errors=True)
    return {"sweep": sweep, "methods": methods}


def run_negation(s: Seed, base: dict[str, dict[str, str]]) -> dict[str, Any]:
    q = s.params["negation"]
    out = {}
    for task in s.tasks:
        others = [t for t in s.tasks if t != task]
        control_base = sum(_acc(base["validation"][t]) for t in others) / len(others)
        floor = q["control_ratio"] * control_base
        points = []
        for lam in q["lambdas"]:
            folder = s.merge(f"neg_{task}_{lam}", "task_arithmetic", {task: -1.0}, lam, None)
            correct = s.score(s.load(folder), "validation")
            points.append({"lambda": lam, "target": _acc(correct[task]),
                           "control": sum(_acc(correct[t]) for t in others) / len(others)})
        ok = [p for p in points if p["control"] >= floor]
        chosen = min(ok, key=lambda p: (p["target"], p["lambda"])) if ok else min(points, key=lambda p: p["lambda"])
        folder = s.merge(f"neg_{task}_{chosen['lambda']}", "task_arithmetic", {task: -1.0}, chosen["lambda"], None)
        out[task] = {"sweep": points, "lambda": chosen["lambda"], "control_rule_met": bool(ok),
                     "chance": 1.0 / int(s.heads[task].out_features), "others": others,
                     "correct": s.score(s.load(folder), "test")}
        shutil.rmtree(s.work / "merged", ignore_errors=True)
    return out


def run_seed(params: dict[str, Any], seed: int, out: Path, device: str) -> dict[str, Any]:
    start = time.perf_counter()
    s = Seed(params, seed, out / f"seed{seed}" / "work", device)
    base = {split: s.score(s.base, split) for split in ("validation", "test")}
    experts = train_experts(s)
    result = {"seed": seed, "tasks": s.tasks, "device": device, "base": base, "experts": experts,
              "addition": run_addition(s, experts, base), "negation": run_negation(s, base)}
    result["seconds"] = time.perf_counter() - start
    path = out / f"seed{seed}" / "encoder.json"
    path.write_text(json.dumps(result, indent=1))
    shutil.rmtree(out / f"seed{seed}" / "work" / "models", ignore_errors=True)
    print(f"seed {seed}: done in {result['seconds']:.0f} s -> {path}", flush=True)
    return result


def log_mlflow(params: dict[str, Any], params_file: str, results: list[dict[str, Any]], out: Path) -> None:
    import mlflow

    from mergeline.tracking import configure_tracking

    configure_tracking(experiment=params["experiment"])
    with mlflow.start_run(run_name="quality-encoder:summary"):
        mlflow.set_tags({"mergeline.benchmark": "quality-encoder", "mergeline.params_file": params_file,
                         "mergeline.seeds": " ".join(str(r["seed"]) for r in results)})
        for r in results:
            for method, entry in r["addition"]["methods"].items():
                mean = sum(_acc(entry["correct"][t]) for t in r["tasks"]) / len(r["tasks"])
                mlflow.log_metric(f"addition.{method}.acc_mean", mean, step=r["seed"])
            for task, entry in r["negation"].items():
                mlflow.log_metric(f"negation.{task}.target", _acc(entry["correct"][task]), step=r["seed"])
        mlflow.log_artifact(str(out / "encoder.md"))
        for r in results:
            mlflow.log_artifact(str(out / f"seed{r['seed']}" / "encoder.json"), artifact_path=f"seed{r['seed']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/quality-encoder.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="bench_out/quality-encoder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--report-only", action="store_true", help="render (and log) the saved JSON only")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--export", help="copy each seed's JSON and the tables here")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    out = Path(args.out)
    results = []
    for seed in args.seeds:
        path = out / f"seed{seed}" / "encoder.json"
        if path.is_file():  # resumable: a finished seed is not recomputed
            results.append(json.loads(path.read_text()))
        elif args.report_only:
            print(f"error: {path}: no saved result for seed {seed}", file=sys.stderr)
            return 2
        else:
            results.append(run_seed(params, seed, out, args.device))
    (out / "encoder.md").write_text(render(results, params))
    print((out / "encoder.md").read_text())
    if args.export:
        Path(args.export).mkdir(parents=True, exist_ok=True)
        for r in results:
            shutil.copy(out / f"seed{r['seed']}" / "encoder.json", Path(args.export) / f"encoder-seed{r['seed']}.json")
    if args.report_only and not args.no_mlflow:
        log_mlflow(params, args.params, results, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
