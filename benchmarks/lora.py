"""LoRA adapters: mergeline's fold against PEFT and mergekit; extract-lora of a champion, rank by rank.

``fold``: mergeline's fold against PEFT's merge, and ``model+lora`` merges against mergekit. ``rank``:
what ``mergeline extract-lora`` keeps of a finished run's champion, rank by rank. Each prints one
markdown table.

    .venv/bin/python benchmarks/lora.py fold                       # SmolLM2-135M-Instruct (packaged), r=8 on q,k,v,o
    .venv/bin/python benchmarks/lora.py fold --base path/to/hf_folder --rank 16
    nice -n 10 .venv/bin/python benchmarks/lora.py rank --run path/to/run --ranks 4,16,64,256

``fold`` imports the base once into ``--workdir`` (float32 safetensors), builds two PEFT LoRA adapters
with random non-zero matrices (seeded), then times each row on its own:
- the adapter's task vector (``mergeline.merge.lora.extract_lora_vector``) against the baseline, PEFT's
  ``merge_and_unload`` + ``save_pretrained`` of the same model (equality: base + τ vs PEFT's weights);
- ``task_arithmetic`` over ``base+adapter_a`` and ``base+adapter_b`` with mergeline (folded while
  streaming) against mergekit 0.1.5 (which merges each adapter with PEFT into its LoRA cache first),
  with bit-equality of the outputs.

``rank``: ``--run`` is the folder of a finished ``mergeline run`` (its params file,
``WORK/eval/metrics.json`` naming the champion, ``WORK/base``, the test splits under ``data_dir``). Per
rank r: ``mergeline extract-lora CHAMPION --base BASE --rank r``, then ``mergeline merge`` of
``passthrough`` over ``BASE+ADAPTER`` (the engine folds the adapter in, as PEFT's ``merge_and_unload``),
then the test accuracies with the evaluate stage's own function and settings
(``mergeline.evaluate.evaluate_model``, ``evaluate.batch_size`` / ``max_length`` of the run's params,
CPU). The champion and the base are scored by the same code in the same process, so every row compares
like with like. "mean" is the mean over the tasks (the pipeline's ``acc/mean``, control excluded);
"flips" counts the test examples, over all sets, that a row gets right where the champion gets them
wrong or the reverse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeline.assets import SMOLLM2, import_base_model  # noqa: E402
from mergeline.cli import main as mergeline  # noqa: E402
from mergeline.evaluate import evaluate_model, load_causal_lm  # noqa: E402
from mergeline.finetune.weights import load_tensors  # noqa: E402
from mergeline.merge.config import MergeConfig  # noqa: E402
from mergeline.merge.engine import run_merge  # noqa: E402
from mergeline.merge.lora import extract_lora_vector  # noqa: E402
from mergeline.params import ExperimentParams, load_params  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def random_adapter(base: Path, out: Path, seed: int, rank: int, targets: list[str]) -> Path:
    """A PEFT LoRA adapter of ``base`` saved as users get them, with A and B both drawn at random
    (``init_lora_weights=False``; PEFT's default B = 0 would fold to a zero update)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)
    settings = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, settings).save_pretrained(str(out))
    return out


def peft_merge(base: Path, adapter: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(str(out))


def mergekit_merge(config: dict, out: Path, cache: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mk_run
    from mergekit.options import MergeOptions

    logging.disable(logging.WARNING)
    mk_run(MergeConfiguration.model_validate(config), str(out), options=MergeOptions(
        lazy_unpickle=False, copy_tokenizer=False, write_model_card=False, quiet=True, lora_merge_cache=str(cache)))
    logging.disable(logging.NOTSET)


def equal(a: Path, b: Path, offset: Path | None = None) -> str:
    ours, theirs = load_tensors(a), load_tensors(b)
    base = load_tensors(offset) if offset is not None else None
    same = all(torch.equal(ours[n] + (base[n] if base is not None else 0), theirs[n]) for n in theirs)
    return "bit-equal" if same else "DIFFERENT"


def fold(args: argparse.Namespace) -> None:
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


def command(argv: list[str]) -> None:
    """One ``mergeline`` command in this process, its progress lines kept off the table."""
    with contextlib.redirect_stdout(io.StringIO()) as said:
        code = mergeline(argv)
    if code != 0:
        raise SystemExit(f"mergeline {' '.join(argv)} failed ({code}):\n{said.getvalue()}")


def score(model_dir: Path, run: Path, params: ExperimentParams) -> dict[str, dict]:
    """Test scores per set (tasks, then the control) as the evaluate stage computes them: ``acc`` and
    ``correct``, one 0/1 per example in file order."""
    sets = [*params.task_names, params.control]
    data = run / params.data_dir
    files = {t: data / t / "test.jsonl" for t in sets}
    metrics = {t: json.loads((data / t / "meta.json").read_text())["metric"] for t in sets}
    model, tokenizer = load_causal_lm(model_dir, "cpu")
    scores = evaluate_model(model, tokenizer, files, batch_size=params.evaluate.batch_size,
                            max_length=params.evaluate.max_length, metrics=metrics)
    return {t: scores[t] for t in sets}


def adapter_row(rank: int, run: Path, params: ExperimentParams, champion: Path, work: Path) -> dict:
    """Extract at ``rank``, fold into the base with ``mergeline merge``, score the result."""
    base, adapter, folded = run / params.work_dir / "base", work / f"adapter_r{rank}", work / f"folded_r{rank}"
    command(["extract-lora", str(champion), "--base", str(base), "--rank", str(rank), "--out", str(adapter),
             "--overwrite", "--quiet"])
    report = json.loads((adapter / "extract_report.json").read_text())
    config = work / f"folded_r{rank}.yaml"
    config.write_text(yaml.safe_dump({"merge_method": "passthrough", "dtype": "float32",
                                      "models": [{"model": f"{base}+{adapter}"}]}))
    command(["merge", str(config), "--out", str(folded), "--overwrite", "--quiet"])
    megabytes = (adapter / "adapter_model.safetensors").stat().st_size / 1e6
    return {"what": f"r = {rank}", "mb": f"{megabytes:.1f}", "error": f"{report['relative_error']:.3f}",
            "acc": score(folded, run, params)}


def rank(args: argparse.Namespace) -> None:
    run, params = args.run.resolve(), load_params(args.run / args.params)
    work_dir = run / params.work_dir
    name = json.loads((work_dir / "eval" / "metrics.json").read_text())["champion"]
    champion = work_dir / "merged" / name
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    size = sum(f.stat().st_size for f in champion.glob("*.safetensors")) / 1e6
    rows = [{"what": f"champion `{name}`", "mb": f"{size:.1f}", "error": "0", "acc": score(champion, run, params)}]
    rows += [adapter_row(int(r), run, params, champion, args.workdir) for r in args.ranks.split(",")]
    rows.append({"what": "base (no adapter)", "mb": "-", "error": "1", "acc": score(work_dir / "base", run, params)})

    sets, tasks = [*params.task_names, params.control], params.task_names
    champ = rows[0]["acc"]
    reference = sum(champ[t]["acc"] for t in tasks) / len(tasks)
    print(f"run {run}, champion {name}, test splits, evaluate batch {params.evaluate.batch_size} max_length "
          f"{params.evaluate.max_length}, CPU, {time.perf_counter() - start:.0f} s in all\n")
    print(f"| rank | adapter MB | relative error | {' | '.join(sets)} | mean (vs champion) | flips |")
    print(f"|---|---:|---:|{'---:|' * len(sets)}---:|---:|")
    for row in rows:
        acc = row["acc"]
        mean = sum(acc[t]["acc"] for t in tasks) / len(tasks)
        flips = sum(x != y for t in sets for x, y in zip(acc[t]["correct"], champ[t]["correct"], strict=True))
        accs = " | ".join(f"{acc[t]['acc']:.3f}" for t in sets)
        print(f"| {row['what']} | {row['mb']} | {row['error']} | {accs} | {mean:.3f} ({mean - reference:+.3f}) "
              f"| {flips} / {sum(len(champ[t]['correct']) for t in sets)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    p = sub.add_parser("fold", help="fold and model+lora merges against PEFT and mergekit")
    p.add_argument("--base", default=SMOLLM2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mergeline-lora-bench"))
    p.set_defaults(run_benchmark=fold)
    p = sub.add_parser("rank", help="extract-lora of a finished run's champion, rank by rank")
    p.add_argument("--run", type=Path, required=True, help="folder of a finished `mergeline run`")
    p.add_argument("--params", default="params.yaml", help="its params file, relative to --run")
    p.add_argument("--ranks", default="4,16,64,256", help="comma-separated LoRA ranks")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mergeline-lora-rank"))
    p.set_defaults(run_benchmark=rank)
    args = parser.parse_args()
    args.run_benchmark(args)


if __name__ == "__main__":
    main()
