"""TaLoS premise on SmolLM2-135M-Instruct: are the low-sensitivity entries shared across tasks?

    .venv/bin/python benchmarks/premise_talos.py --seeds 0 1 2 --calib 16 --out bench_out/premise-talos

For each seed and task, the TaLoS mask of the *pretrained* model (``mergeline.finetune.talos_mask``:
keep 10%, 4 rounds, the task's validation records as calibration, as the pipeline) is computed and
saved; then the Jaccard overlap (``mask_overlap``) of every pair of tasks (same seed), of the same
task over two seeds (other calibration records: how stable a mask is), and the overlap that
independent random masks of the same densities would have (``random_mask_overlap``, per tensor and
over the model). Writes ``<out>/premise_talos.json``; resumable (finished masks are kept).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from mergeline.assets import import_base_model
from mergeline.data import build_task
from mergeline.finetune import talos_mask
from mergeline.finetune.batching import read_records
from mergeline.finetune.checkpoint import load_causal_lm
from mergeline.finetune.talos import mask_density, mask_overlap
from mergeline.finetune.weights import load_tensors, save_tensors
from mergeline.importance import random_mask_overlap


def overlaps(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Two masks' Jaccard overlap, and that of random masks of the same densities (per tensor, global)."""
    return {"overlap": mask_overlap(a, b), "random_per_tensor": random_mask_overlap(a, b),
            "random_global": random_mask_overlap(a, b, per_tensor=False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["news", "sentiment", "code"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--calib", type=int, default=16, help="calibration records per task and seed")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="bench_out/premise-talos")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(1)  # a shared CPU: one thread per process runs fastest (docs/quality.md)
    base = out / "base"
    import_base_model("smollm2-135m-instruct", base)
    model, tokenizer = load_causal_lm(base, "cpu")
    masks: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for seed, task in itertools.product(args.seeds, args.tasks):
        path = out / f"mask-{task}-seed{seed}.safetensors"
        if not path.is_file():
            build_task(task, out / f"data-seed{seed}" / task, {"validation": args.calib}, seed)
            records = read_records(out / f"data-seed{seed}" / task / "validation.jsonl")
            t0 = time.perf_counter()
            mask = talos_mask(model, tokenizer, records, args.keep, args.rounds, seed, per_sample="vmap", chunk_size=2)
            save_tensors({n: m.to(torch.uint8) for n, m in mask.items()}, path)
            print(f"seed {seed} {task}: density {mask_density(mask):.4f} in {time.perf_counter() - t0:.0f} s", flush=True)
        masks[(seed, task)] = {n: t.bool() for n, t in load_tensors(path).items()}

    result = {"model": "SmolLM2-135M-Instruct", "keep": args.keep, "rounds": args.rounds, "calib": args.calib,
              "seeds": args.seeds, "tasks": args.tasks,
              "density": {f"{t}/seed{s}": mask_density(m) for (s, t), m in masks.items()},
              "across_tasks": {f"{a}|{b}/seed{s}": overlaps(masks[(s, a)], masks[(s, b)])
                               for s in args.seeds for a, b in itertools.combinations(args.tasks, 2)},
              "across_seeds": {f"{t}/seed{s}|seed{r}": overlaps(masks[(s, t)], masks[(r, t)])
                               for t in args.tasks for s, r in itertools.combinations(args.seeds, 2)}}
    (out / "premise_talos.json").write_text(json.dumps(result, indent=1))
    for group in ("across_tasks", "across_seeds"):
        for key, v in result[group].items():
            print(f"{group} {key}: {v['overlap']:.3f} (random {v['random_per_tensor']:.3f} / {v['random_global']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
