"""The seed papers' claims on the encoder family: all-MiniLM-L6-v2 with frozen task heads, every method.

    python3 benchmarks/quality_encoder.py --params params/quality-encoder.yaml --seeds 0 1 2 --out /tmp/enc \
        --device cuda                        # one process per seed; a finished seed is not recomputed
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_encoder.py --smollm2-premise --seeds 0 \
        --out bench_out/premise-talos        # the TaLoS premise on SmolLM2-135M-Instruct (CPU)
    .venv/bin/python benchmarks/encoder_claims.py --results docs/results/claims --out docs   # the verdicts

Per seed (``_quality_encoder`` has the heads, fine-tunes, STA gradient and TaLoS mask):
dense experts (lr from ``finetune.lrs`` on validation), TaLoS experts (mask on θ0 per task, lr from the
same grid), θ_inst (θ0 fine-tuned briefly on all tasks: LATA's instruct model) and LATA experts from it,
STA importance |g·τ| and |g·θ| at each expert. Every merge is ``mergeline.merge.memory.merge_state_dicts``
(the file engine over tensors in memory) at λ = 1;
as each method is θ_ref + λΔ, the λ grid (the same for every method) is then swept in memory.
Addition: best (setting, λ) per method by validation mean normalized accuracy, scored on test, and
its λ = 1 point. Negation of each task: θ_ref − λΔ_t, the lowest validation target accuracy whose
control (other tasks) is ≥ ``control_ratio`` × the reference model's. Premises: task-vector cosines,
the loss along θ0 + ατ_t, the TaLoS masks' overlap vs random masks. Writes ``<out>/seed<N>.json``.

``--smollm2-premise``: the TaLoS premise on SmolLM2-135M-Instruct instead. Per seed and task of the
params, the library's TaLoS mask of the *pretrained* model (``mergeline.finetune.talos_mask``, the
params' ``talos`` keep and rounds, ``--calib`` validation records of the task as calibration), saved;
then the Jaccard overlap of every pair of tasks (same seed), of the same task over two seeds, and that
of independent random masks of the same densities. Writes ``<out>/premise_talos.json``; finished
masks are kept.
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

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import _quality_encoder as E  # noqa: E402
from mergeline.assets import import_base_model  # noqa: E402
from mergeline.data import build_task  # noqa: E402
from mergeline.env import configure_offline_defaults  # noqa: E402
from mergeline.finetune import talos_mask  # noqa: E402
from mergeline.finetune.batching import read_records  # noqa: E402
from mergeline.finetune.checkpoint import load_causal_lm  # noqa: E402
from mergeline.finetune.talos import mask_density, mask_overlap  # noqa: E402
from mergeline.finetune.weights import load_tensors, save_tensors  # noqa: E402
from mergeline.importance import loss_along, pairwise_cosines, quadratic_gap, random_mask_overlap  # noqa: E402
from mergeline.merge.memory import merge_state_dicts  # noqa: E402


START = time.perf_counter()


def say(message: str) -> None:
    """One progress line, stamped with the seconds since the process started (where the time goes)."""
    print(f"[{time.perf_counter() - START:4.0f}s] {message}", flush=True)


def acc(bits: str) -> float:
    return bits.count("1") / len(bits)


def overlaps(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Two masks' Jaccard overlap, and that of random masks of the same densities (per tensor, global)."""
    return {"overlap": mask_overlap(a, b), "random_per_tensor": random_mask_overlap(a, b),
            "random_global": random_mask_overlap(a, b, per_tensor=False)}


class Seed:
    def __init__(self, params: dict[str, Any], seed: int, work: Path, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        configure_offline_defaults()
        torch.manual_seed(seed)
        self.p, self.seed, self.work, self.device = params, seed, work, device
        self.tasks = list(params["tasks"])
        self.tokenizer = AutoTokenizer.from_pretrained(E.encoder_dir())
        self.base = AutoModel.from_pretrained(E.encoder_dir(), dtype=torch.float32).to(device).eval()
        self.data, classes = E.build_data(params["tasks"], work / "data", seed, self.tokenizer, device, params["max_length"])
        self.heads = {t: E.fit_head(E.embed_all(self.base, self.data[t]["train"]), self.data[t]["train"].labels,
                                    classes[t]) for t in self.tasks}
        self.chance = {t: 1.0 / classes[t] for t in self.tasks}
        self.model = copy.deepcopy(self.base)  # the working copy every evaluation loads into
        self.reports: dict[str, dict[str, Any]] = {}
        self.states = {"base": self.state(self.base)}
        self.importance: dict[str, dict[str, torch.Tensor]] = {}  # "sta-tau:<task>" -> STA's scores

    def state(self, model) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def score(self, state: dict[str, torch.Tensor], split: str) -> dict[str, str]:
        self.model.load_state_dict(state)
        return {t: E.score(self.model, self.heads[t], self.data[t][split]) for t in self.tasks}

    def train(self, name: str, start: str, tasks: list[str], lrs: list[float], steps: int, masks=None) -> dict[str, Any]:
        """Fine-tune ``start`` on ``tasks`` at each lr; keep the best on validation (own tasks' mean)."""
        best, tried, start_time = None, {}, time.perf_counter()
        for lr in lrs:
            self.model.load_state_dict(self.states[start])
            E.finetune(self.model, [(self.heads[t], self.data[t]["train"]) for t in tasks], steps=steps,
                       batch=self.p["finetune"]["batch_size"], lr=lr, seed=self.seed, mask=masks)
            val = sum(acc(E.score(self.model, self.heads[t], self.data[t]["validation"])) for t in tasks) / len(tasks)
            tried[f"{lr:g}"] = val
            if best is None or val > best[0]:
                best = (val, lr, self.state(self.model))
        self.states[name] = best[2]
        self.model.load_state_dict(best[2])
        say(f"seed {self.seed} {name}: lr {best[1]:g}, validation {best[0]:.3f} "
            f"({len(lrs)} lr in {time.perf_counter() - start_time:.0f} s)")
        return {"lr": best[1], "tried": tried}

    def delta(self, key: str, method: str, ref: str, models: dict[str, dict[str, Any]], **parameters: Any
              ) -> dict[str, torch.Tensor]:
        """Δ = merge(λ = 1) − θ_ref for ``models`` {expert: per-model parameters}, merged in memory."""
        report: dict[str, Any] = {}
        merged = merge_state_dicts(method, self.states[ref], [self.states[m] for m in models],
                                   model_parameters=list(models.values()), parameters=parameters, dtype="float32",
                                   seed=self.seed, device=self.device, report=report)
        self.reports[key] = report
        return {k: merged[k].to(v.device) - v for k, v in self.states[ref].items() if k in merged}

    def moved(self, ref: str, delta: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
        return {k: v + lam * delta[k] if k in delta else v for k, v in self.states[ref].items()}


def variants(s: Seed, sign: float, tasks: list[str]) -> dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Every method's settings: name -> (merge method, reference model, {expert: per-model params}, params)."""
    d = s.p["densities"]
    one = {"weight": sign}
    out: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
        "TA": ("task_arithmetic", "base", {t: one for t in tasks}, {}),
        "TaLoS": ("task_arithmetic", "base", {f"talos-{t}": one for t in tasks}, {}),
        "TA-inst": ("task_arithmetic", "inst", {f"inst-{t}": one for t in tasks}, {}),
    }
    for rho in d["ties"]:
        out[f"TIES d={rho}"] = ("ties", "base", {t: {**one, "density": rho} for t in tasks}, {"normalize": sign > 0})
    for rho in d["dare"]:
        out[f"DARE d={rho}"] = ("dare_ties", "base", {t: {**one, "density": rho} for t in tasks},
                                {"normalize": False, "seed": s.seed})
    for of in ("tau", "theta"):
        for rho in d["sta"]:
            out[f"STA-{of} d={rho}"] = ("sta", "base", {t: {**one, "density": rho, "importance": s.importance[
                f"sta-{of}:{t}"]} for t in tasks}, {})
    inst = {f"inst-{t}": one for t in tasks}
    pre = s.states["base"]
    for scheme, delta, rescale in (("threshold", "median", False), ("threshold", "median", True), ("linear_rank", 0.95, False)):
        name = f"LATA {scheme}{' median' if scheme == 'threshold' else ''}{' rescaled' if rescale else ''}"
        out[name] = ("lata", "inst", inst, {"pretrained_model": pre, "scheme": scheme, "delta": delta,
                                            "rescale_weights": rescale})
    if sign > 0:
        for g in ("model", "layer"):
            out[f"MetaGPT {g}"] = ("metagpt", "base", {t: {} for t in tasks}, {"granularity": g})
        out["MetaGPT+TIES"] = ("metagpt", "base", {t: {"density": d["ties"][0]} for t in tasks}, {"refine": "ties"})
        out["MetaGPT+DARE"] = ("metagpt", "base", {t: {"density": d["dare"][-1]} for t in tasks},
                               {"refine": "dare", "seed": s.seed})
    return out


def family(name: str) -> str:
    """The method a variant belongs to (its density or LATA scheme is chosen on validation like λ)."""
    return "LATA" if name.startswith("LATA") else name.split(" d=")[0]


def run_addition(s: Seed, experts_val: dict[str, float]) -> dict[str, Any]:
    grid, curves, best, out = s.p["lambdas"], {}, {}, {}
    for name, (method, ref, models, params) in variants(s, 1.0, s.tasks).items():
        delta = s.delta(f"add {name}", method, ref, models, **params)
        lams = [1.0] if method == "metagpt" else grid
        curves[name] = {}
        for lam in lams:
            val = s.score(s.moved(ref, delta, lam), "validation")
            curves[name][f"{lam:g}"] = norm = sum(acc(val[t]) / experts_val[t] for t in s.tasks) / len(s.tasks)
            key = (-norm, abs(lam - 1.0))
            if family(name) not in best or key < best[family(name)][0]:
                best[family(name)] = (key, name, lam, delta, ref)
        if name.startswith("LATA"):
            out.setdefault("lata_weights", {})[name] = s.reports[f"add {name}"].get("layer_weights")
            assert not s.reports[f"add {name}"].get("all_weights_one"), f"{name}: every LATA layer weight is 1 (= TA)"
    chosen = {}
    for fam, (_, name, lam, delta, ref) in best.items():
        chosen[fam] = {"variant": name, "lambda": lam, "test": s.score(s.moved(ref, delta, lam), "test"),
                       "test_lambda1": s.score(s.moved(ref, delta, 1.0), "test")}
    out.update(curves=curves, chosen=chosen)
    return out


def run_negation(s: Seed, base_val: dict[str, dict[str, str]]) -> dict[str, Any]:
    out = {}
    inst_val = s.score(s.states["inst"], "validation")
    for task in s.tasks:
        others = [t for t in s.tasks if t != task]
        best, curves = {}, {}
        for name, (method, ref, models, params) in variants(s, -1.0, [task]).items():
            reference = base_val if ref == "base" else inst_val
            floor = s.p["control_ratio"] * sum(acc(reference[t]) for t in others) / len(others)
            delta = s.delta(f"neg {task} {name}", method, ref, models, **params)
            curves[name] = {}
            for lam in s.p["negation_lambdas"]:
                val = s.score(s.moved(ref, delta, lam), "validation")
                target, control = acc(val[task]), sum(acc(val[t]) for t in others) / len(others)
                curves[name][f"{lam:g}"] = [target, control]
                key = (control < floor, target if control >= floor else lam, lam)
                if family(name) not in best or key < best[family(name)][0]:
                    best[family(name)] = (key, name, lam, delta, ref)
        chosen = {fam: {"variant": n, "lambda": lam, "test": s.score(s.moved(ref, d, lam), "test"),
                        "control_rule_met": not key[0]} for fam, (key, n, lam, d, ref) in best.items()}
        out[task] = {"curves": curves, "chosen": chosen, "others": others}
        say(f"seed {s.seed} negation {task}: " + ", ".join(f"{f} {acc(c['test'][task]):.3f}" for f, c in chosen.items()))
    return out


def premises(s: Seed, masks: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    base = s.states["base"]
    vectors = {t: {k: s.states[t][k] - v for k, v in base.items() if v.is_floating_point()} for t in s.tasks}
    losses = {}
    for t in s.tasks:
        params = {k: v for k, v in vectors[t].items() if k in dict(s.model.named_parameters())}
        s.model.load_state_dict(base)
        losses[t] = loss_along(s.model, base, params, [0.0, 0.25, 0.5, 0.75, 1.0],
                               lambda m, t=t: E.mean_loss(m, s.heads[t], s.data[t]["validation"]))
    pairs = [(a, b) for i, a in enumerate(s.tasks) for b in s.tasks[i + 1:]]
    return {"cosines": pairwise_cosines(vectors),
            "loss_along": {t: {f"{a:g}": v for a, v in l.items()} for t, l in losses.items()},
            "quadratic_gap": {t: quadratic_gap(l) for t, l in losses.items()},
            "talos_density": {t: mask_density(m) for t, m in masks.items()},
            "talos_overlap": {f"{a}|{b}": overlaps(masks[a], masks[b]) for a, b in pairs}}


def run_seed(p: dict[str, Any], seed: int, out: Path, device: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = Seed(p, seed, out / f"work{seed}", device)
    f = p["finetune"]
    res: dict[str, Any] = {"seed": seed, "tasks": s.tasks, "device": device, "chance": s.chance, "experts": {}}
    res["base"] = {split: s.score(s.states["base"], split) for split in ("validation", "test")}
    masks = {}
    for t in s.tasks:
        res["experts"][t] = s.train(t, "base", [t], f["lrs"], f["steps"])
        s.model.load_state_dict(s.states[t])  # STA importance at the expert, on held-out train records
        calib = E.Split(*(x[-p["calib"]:] if x is not None else None for x in (
            s.data[t]["train"].ids, s.data[t]["train"].mask, s.data[t]["train"].labels, s.data[t]["train"].types)))
        g = E.mean_gradient(s.model, s.heads[t], calib)
        tau = {k: s.states[t][k] - s.states["base"][k] for k in g}
        s.importance[f"sta-tau:{t}"] = {k: (g[k] * tau[k]).abs() for k in g}
        s.importance[f"sta-theta:{t}"] = {k: (g[k] * s.states[t][k]).abs() for k in g}
        s.model.load_state_dict(s.states["base"])
        masks[t] = E.talos_mask(s.model, s.heads[t], s.data[t]["validation"], keep=p["talos"]["keep"],
                                rounds=p["talos"]["rounds"], seed=seed)
        say(f"seed {seed} talos mask {t}: density {mask_density(masks[t]):.3f}")
        res["experts"][f"talos-{t}"] = s.train(f"talos-{t}", "base", [t], f["lrs"], f["steps"], masks=masks[t])
    res["experts"]["inst"] = s.train("inst", "base", s.tasks, [p["inst"]["lr"]], p["inst"]["steps"])
    for t in s.tasks:
        res["experts"][f"inst-{t}"] = s.train(f"inst-{t}", "inst", [t], [res["experts"][t]["lr"]], f["steps"])
    res["expert_correct"] = {m: {split: s.score(s.states[m], split) for split in ("validation", "test")}
                             for m in res["experts"]}
    experts_val = {t: acc(res["expert_correct"][t]["validation"][t]) for t in s.tasks}
    stages = res["stage_seconds"] = {"experts": time.perf_counter() - t0}
    for stage, work in (("premises", lambda: premises(s, masks)), ("addition", lambda: run_addition(s, experts_val)),
                        ("negation", lambda: run_negation(s, res["base"]["validation"]))):
        start = time.perf_counter()
        res[stage] = work()
        stages[stage] = time.perf_counter() - start
        say(f"seed {seed}: {stage} in {stages[stage]:.0f} s")
    res["reports"] = {k: v for k, v in s.reports.items() if k.startswith("add LATA")}
    res["seconds"] = time.perf_counter() - t0
    (out / f"seed{seed}.json").write_text(json.dumps(res))
    shutil.rmtree(out / f"work{seed}", ignore_errors=True)
    say(f"seed {seed}: done in {res['seconds']:.0f} s")
    return res


def smollm2_premise(p: dict[str, Any], seeds: list[int], calib: int, out: Path) -> None:
    """The TaLoS premise on SmolLM2-135M-Instruct (module docstring): ``<out>/premise_talos.json``."""
    torch.set_num_threads(1)  # a shared CPU: one thread per process runs fastest (docs/quality.md)
    tasks, keep, rounds = list(p["tasks"]), p["talos"]["keep"], p["talos"]["rounds"]
    import_base_model("smollm2-135m-instruct", out / "base")
    model, tokenizer = load_causal_lm(out / "base", "cpu")
    masks: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for seed, task in itertools.product(seeds, tasks):
        path = out / f"mask-{task}-seed{seed}.safetensors"
        if not path.is_file():
            build_task(task, out / f"data-seed{seed}" / task, {"validation": calib}, seed)
            records = read_records(out / f"data-seed{seed}" / task / "validation.jsonl")
            mask = talos_mask(model, tokenizer, records, keep, rounds, seed, per_sample="vmap", chunk_size=2)
            save_tensors({n: m.to(torch.uint8) for n, m in mask.items()}, path)
            say(f"seed {seed} {task}: density {mask_density(mask):.4f}")
        masks[(seed, task)] = {n: t.bool() for n, t in load_tensors(path).items()}
    result = {"model": "SmolLM2-135M-Instruct", "keep": keep, "rounds": rounds, "calib": calib, "seeds": seeds,
              "tasks": tasks, "density": {f"{t}/seed{s}": mask_density(m) for (s, t), m in masks.items()},
              "across_tasks": {f"{a}|{b}/seed{s}": overlaps(masks[(s, a)], masks[(s, b)])
                               for s in seeds for a, b in itertools.combinations(tasks, 2)},
              "across_seeds": {f"{t}/seed{s}|seed{r}": overlaps(masks[(s, t)], masks[(r, t)])
                               for t in tasks for s, r in itertools.combinations(seeds, 2)}}
    (out / "premise_talos.json").write_text(json.dumps(result, indent=1))
    for group in ("across_tasks", "across_seeds"):
        for key, v in result[group].items():
            print(f"{group} {key}: {v['overlap']:.3f} (random {v['random_per_tensor']:.3f} / {v['random_global']:.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/quality-encoder.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="bench_out/quality-encoder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smollm2-premise", action="store_true", help="the TaLoS premise on SmolLM2 instead (CPU)")
    parser.add_argument("--calib", type=int, default=16, help="with --smollm2-premise: calibration records per task")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smollm2_premise:
        smollm2_premise(params, args.seeds, args.calib, out)
        return 0
    for seed in args.seeds:
        if not (out / f"seed{seed}.json").is_file():  # resumable: a finished seed is kept
            run_seed(params, seed, out, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
