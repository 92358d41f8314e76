"""LoRA adapters folded by mergeline, against PEFT's merge and mergekit's ``model+lora`` merges.

    .venv/bin/python benchmarks/lora.py                       # SmolLM2-135M-Instruct (packaged), r=8 on q,k,v,o
    .venv/bin/python benchmarks/lora.py --base path/to/hf_folder --rank 16

Imports the base once into ``--workdir`` (float32), builds two PEFT LoRA adapters with random non-zero
matrices (seeded), then times the adapter's task vector against PEFT's ``merge_and_unload`` + save, and a
``task_arithmetic`` merge over ``base+adapter_a`` and ``base+adapter_b`` against mergekit 0.1.5; each row
with the outputs' bit-equality. Prints one markdown table (what each row runs: benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge as mergekit_run
from mergekit.options import MergeOptions
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeline.assets import SMOLLM2, import_base_model  # noqa: E402
from mergeline.finetune.weights import load_tensors  # noqa: E402
from mergeline.merge.config import MergeConfig  # noqa: E402
from mergeline.merge.engine import run_merge  # noqa: E402
from mergeline.merge.lora import extract_lora_vector  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def random_adapter(base: Path, out: Path, seed: int, rank: int, targets: list[str]) -> Path:
    """A PEFT LoRA adapter of ``base`` saved as users get them, with A and B both drawn at random
    (``init_lora_weights=False``; PEFT's default B = 0 would fold to a zero update)."""
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)
    settings = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, settings).save_pretrained(str(out))
    return out


def peft_merge(base: Path, adapter: Path, out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(str(out))


def mergekit_merge(config: dict, out: Path, cache: Path) -> None:
    logging.disable(logging.WARNING)
    mergekit_run(MergeConfiguration.model_validate(config), str(out), options=MergeOptions(
        lazy_unpickle=False, copy_tokenizer=False, write_model_card=False, quiet=True, lora_merge_cache=str(cache)))
    logging.disable(logging.NOTSET)


def equal(a: Path, b: Path, offset: Path | None = None) -> str:
    ours, theirs = load_tensors(a), load_tensors(b)
    base = load_tensors(offset) if offset is not None else None
    same = all(torch.equal(ours[n] + (base[n] if base is not None else 0), theirs[n]) for n in theirs)
    return "bit-equal" if same else "DIFFERENT"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=SMOLLM2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mergeline-lora-bench"))
    args = parser.parse_args()
    work = args.workdir
    base = work / "base"
    import_base_model(args.base, base)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    adapters = [random_adapter(base, work / f"adapter_{k}", k, args.rank, targets) for k in (1, 2)]
    for name in ("vector", "peft", "ours", "mk", "mk_cache"):
        shutil.rmtree(work / name, ignore_errors=True)
    rows = []
    t_ours = timed(lambda: extract_lora_vector(base, adapters[0], work / "vector"))
    t_peft = timed(lambda: peft_merge(base, adapters[0], work / "peft"))
    rows.append(("task vector of one adapter (fold)", t_ours, "PEFT merge_and_unload + save", t_peft,
                 equal(work / "vector", work / "peft", offset=base)))
    config = {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
              "parameters": {"lambda": 0.7},
              "models": [{"model": f"{base}+{a}", "parameters": {"weight": 1.0}} for a in adapters]}
    t_ours = timed(lambda: run_merge(MergeConfig.model_validate(config), work / "ours"))
    t_mk = timed(lambda: mergekit_merge(config, work / "mk", work / "mk_cache"))
    rows.append(("TA over base+adapter_a, base+adapter_b", t_ours, "mergekit 0.1.5 (same YAML)", t_mk,
                 equal(work / "ours", work / "mk")))
    print(f"base {args.base}, LoRA r={args.rank} alpha={2 * args.rank} on {', '.join(targets)}, float32, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| mergeline | seconds | baseline | seconds | ratio | output |")
    print("|---|---:|---|---:|---:|---|")
    for what, ours, baseline, theirs, same in rows:
        print(f"| {what} | {ours:.1f} | {baseline} | {theirs:.1f} | {ours / theirs:.2f} | {same} |")


if __name__ == "__main__":
    main()
