"""What ``mergeline extract-lora`` keeps of a finished run's champion, rank by rank.

    nice -n 10 .venv/bin/python benchmarks/lora_rank.py --run path/to/run --ranks 4,16,64,256

``--run`` is the folder of a finished ``mergeline run`` (its params file, ``WORK/eval/metrics.json``
naming the champion, ``WORK/base``, the test splits under ``data_dir``). Per rank r: ``mergeline
extract-lora CHAMPION --base BASE --rank r``, then ``mergeline merge`` of ``passthrough`` over
``BASE+ADAPTER`` (the engine folds the adapter in, as PEFT's ``merge_and_unload``), then the test
accuracies with the evaluate stage's own function and settings (``mergeline.evaluate.evaluate_model``,
``evaluate.batch_size`` / ``max_length`` of the run's params, CPU). The champion and the base are scored
by the same code in the same process, so every row compares like with like. Prints one markdown table;
"mean" is the mean over the tasks (the pipeline's ``acc/mean``, control excluded); "flips" counts the
test examples, over all sets, that a row gets right where the champion gets them wrong or the reverse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeline.cli import main as mergeline  # noqa: E402
from mergeline.evaluate import evaluate_model, load_causal_lm  # noqa: E402
from mergeline.params import ExperimentParams, load_params  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="folder of a finished `mergeline run`")
    parser.add_argument("--params", default="params.yaml", help="its params file, relative to --run")
    parser.add_argument("--ranks", default="4,16,64,256", help="comma-separated LoRA ranks")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mergeline-lora-rank"))
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
