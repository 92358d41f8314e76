"""Merge speed and memory: mergeline against mergekit and against a plain read+write of the same bytes.

    .venv/bin/python benchmarks/merge_speed.py --params 0.9e9 --finetunes 4 --dtype bfloat16 --device cpu

Builds a base and N fine-tunes of a Llama-shaped model of about ``--params`` parameters (or of a given
width and depth, ``--sizes 512x8``) offline (random weights, small independent per-model deltas,
sharded safetensors; cached in ``--workdir``), then, in one run, for every method of ``--methods`` on
every device of ``--device`` (``cpu,cuda``) times each tool in its own process:
  - mergeline:  ``mergeline merge CONFIG --out DIR --device D``
  - mergekit:   ``mergekit-yaml CONFIG DIR [--cuda]`` (the same CONFIG; local absolute paths, offline),
    for the methods mergekit has (TA, TIES, DELLA, Model Stock, linear)
  - read+write: ``_child.py copy``: read every input tensor once, write one model (no arithmetic)
and the bound "read the input bytes once" (``_child.py read``). Each tool's time is that of the
whole command and, in parentheses, of its merge function alone (mergeline's and mergekit's
``run_merge``, timed inside the process: no interpreter start, imports or exit). It prints one markdown
table (``_speed_table.py``; also written to ``--table-out``), one row per size × device × method. The
max |mergeline − mergekit| over every output tensor is in the last column (DELLA samples its masks from
different RNG streams in the two tools, so its outputs differ by design; with ``--dtype float32``
Task Arithmetic's must be bit-equal). Times are the best of ``--repeat`` runs; inputs are read once beforehand so every run sees a warm
page cache. Exit status 1 if any run failed or a comparison found a mismatch in names/shapes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from _measure import Measured, best_of, compare_models, run_child, run_entry_point
from _child import read_files
from _speed_table import DeviceResult, MethodResult, SizeResult, report
from _synthetic_models import LlamaShape, ModelSet, build_model_set, llama_shape, model_files

GB = 1e9
# label -> merge_method; the methods mergekit 0.1.5 has are also run there
METHODS = {"TA": "task_arithmetic", "TIES": "ties", "DELLA": "della", "MODEL_STOCK": "model_stock",
           "LINEAR": "linear", "TSV": "tsv", "ISO_C": "iso_c", "ISO_CTS": "iso_cts",
           "CONSENSUS_TA": "consensus_ta", "CONSENSUS_TIES": "consensus_ties"}
IN_MERGEKIT = {"task_arithmetic", "ties", "della", "model_stock", "linear"}
TOOLS = ("mergeline", "mergekit", "baseline")
TIMED = {"mergeline": "mergeline.merge.engine:run_merge", "mergekit": "mergekit.scripts.run_yaml:run_merge"}


def merge_config(models: ModelSet, method: str, density: float) -> dict:
    """A mergekit-schema config both tools read. Compute in float32, write the inputs' dtype.

    Task-arithmetic family: weight 1/N per model (TIES and DELLA: ``density``); linear: weight 1/N per
    fine-tune, no base; Model Stock and the methods mergekit lacks: no per-model parameters (their
    defaults: weight 1, λ 1)."""
    weight = round(1.0 / len(models.finetunes), 6)
    entries = []
    for ft in models.finetunes:
        params: dict[str, float] = {}
        if method in ("task_arithmetic", "ties", "della", "linear"):
            params["weight"] = weight
        if method in ("ties", "della"):
            params["density"] = density
        entries.append({"model": str(ft), **({"parameters": params} if params else {})})
    base = {} if method == "linear" else {"base_model": str(models.base)}
    return {"merge_method": method, **base, "models": entries, "dtype": "float32", "out_dtype": models.dtype}


def read_bound(files: list[Path], log: Path) -> Measured:
    """The read bound's run, timed by the child around the reads alone (no interpreter start): its
    whole time and its "merge alone" are the same, so mergeline's share of the bound is a plain ratio."""
    measured = run_child(["read", *map(str, files)], log)
    if not measured.error:
        measured.seconds = measured.inner_seconds  # type: ignore[assignment]
    return measured


def parse_size(text: str) -> float | LlamaShape:
    """``0.9e9`` (parameters) or ``512x8`` (hidden size x layers, vocabulary 32,000)."""
    shaped = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    return llama_shape(int(shaped[1]), int(shaped[2])) if shaped else float(text)


class Bench:
    """Runs the tools on one model set; every output lands under ``workdir/out``."""

    def __init__(self, args: argparse.Namespace, flush=lambda bench: None) -> None:
        self.args = args
        self.workdir: Path = args.workdir.resolve()
        self.failed = False
        self.results: list[SizeResult] = []
        self._flush = flush  # called after every measurement, so a killed run still leaves its table

    def measure(self, what: str, run: Callable[[], Measured], out: Path | None = None) -> Measured:
        """The fastest of ``--repeat`` runs (each from no output ``out``, as a user's would start)."""
        print(what, flush=True)
        runs = []
        for _ in range(self.args.repeat):
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            runs.append(run())
        result = best_of(runs)
        if result.error:
            self.failed = True
            print(f"  failed: {result.error}", file=sys.stderr)
        inner = "" if result.inner_seconds is None else f" ({result.inner_seconds:.1f} timed inside)"
        print(f"  {result.seconds:.1f} s{inner}, peak RSS {result.max_rss / GB:.2f} GB", flush=True)
        self._flush(self)
        return result

    def run_size(self, size: float | LlamaShape) -> None:
        """The model set of ``size`` (built once, cached in the workdir), read once so every run sees a
        warm page cache; then the read bound and every device."""
        a = self.args
        shape = size if isinstance(size, LlamaShape) else None
        params = float(shape.num_params()) if shape else float(size)  # type: ignore[arg-type]
        tag = (f"h{shape.hidden_size}x{shape.num_hidden_layers}" if shape else f"{params / 1e9:.3g}B") \
            + f"-{a.dtype}-{a.finetunes}ft"
        models = build_model_set(self.workdir / "models" / tag, params, a.finetunes, a.dtype,
                                 shard_bytes=int(a.shard_gb * GB), device=a.devices[0], shape=shape)
        files = [f for m in models.all_models for f in model_files(m)]
        print(f"[{tag}] warming the page cache ({sum(f.stat().st_size for f in files) / GB:.2f} GB)")
        read_files(files)
        out, logs = self.workdir / "out", self.workdir / "logs" / tag
        logs.mkdir(parents=True, exist_ok=True)  # every tool writes its config and log here
        result = SizeResult(models, sum(f.stat().st_size for f in files))
        self.results.append(result)
        if "baseline" in a.tools:
            result.read = self.measure(f"[{tag}] read bound", lambda: read_bound(files, logs / "read.log"))
        for device in a.devices:
            where = result.devices[device] = DeviceResult()
            if "baseline" in a.tools:
                copy = ["copy", device, str(out / "baseline"), *map(str, models.all_models)]
                where.baseline = self.measure(f"[{tag} {device}] read+write baseline", lambda: run_child(
                    copy, logs / f"baseline-{device}.log"), out / "baseline")
                shutil.rmtree(out / "baseline", ignore_errors=True)
            for label in a.methods:
                where.methods[label] = self.run_method(models, METHODS[label], device, out, logs,
                                                       f"[{tag} {device}] {label}")

    def run_method(self, models: ModelSet, method: str, device: str, out: Path, logs: Path,
                   tag: str) -> MethodResult:
        """One method through each tool of ``--tools`` that has it (``mergeline merge``, ``mergekit-yaml``,
        each through its console entry point), on one config; then the two outputs compared."""
        a = self.args
        config = logs / f"{method}.yaml"
        config.write_text(yaml.safe_dump(merge_config(models, method, a.density), sort_keys=False))
        res = MethodResult(in_mergekit=method in IN_MERGEKIT)
        ml_out, mk_out = out / f"mergeline-{method}", out / f"mergekit-{method}"
        commands = {"mergeline": ("mergeline.cli:main", ["merge", str(config), "--out", str(ml_out), "--device", device]),
                    "mergekit": ("mergekit.scripts.run_yaml:main", [str(config), str(mk_out), "--no-copy-tokenizer",
                                 "--quiet", *(["--cuda"] if device.startswith("cuda") else [])])}
        for tool, (entry, argv) in commands.items():
            if tool in a.tools and (tool == "mergeline" or res.in_mergekit):
                log = logs / f"{tool}-{method}-{device}.log"
                setattr(res, tool, self.measure(f"{tag}: {tool}", lambda: run_entry_point(entry, argv, log, TIMED[tool]),
                                                ml_out if tool == "mergeline" else mk_out))
        if res.mergeline and res.mergekit and not (res.mergeline.error or res.mergekit.error):
            res.comparison = compare_models(ml_out, mk_out)
            print(f"  mergeline vs mergekit: {res.comparison.summary()} over {res.comparison.tensors} tensors")
            if res.comparison.problems:
                self.failed = True
                print("  mismatch: " + "; ".join(res.comparison.problems[:5]), file=sys.stderr)
            self._flush(self)
        if not a.keep_outputs:
            shutil.rmtree(ml_out, ignore_errors=True)
            shutil.rmtree(mk_out, ignore_errors=True)
        return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, default=0.9e9, help="parameters per model (e.g. 0.9e9)")
    p.add_argument("--sizes", help="comma-separated sizes to run instead of --params: parameter counts "
                                   "(0.1e9) or hidden x layers (512x8)")
    p.add_argument("--finetunes", type=int, default=4, help="fine-tuned models merged onto the base")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the stored models (the merge computes in float32 and writes this dtype)")
    p.add_argument("--device", default="cpu", help="where both tools compute: cpu, cuda, or both (cpu,cuda)")
    p.add_argument("--methods", default="TA,TIES", help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    p.add_argument("--density", type=float, default=0.5, help="TIES and DELLA density (fraction of each delta kept)")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is reported")
    p.add_argument("--shard-gb", type=float, default=1.0, help="max safetensors shard size of the inputs")
    p.add_argument("--workdir", type=Path, default=Path("bench_out/merge_speed"), help="cache and outputs")
    p.add_argument("--table-out", type=Path, help="also write the table here (default WORKDIR/table.md)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the merged models for inspection")
    args = p.parse_args(argv)
    args.methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.devices = [d.strip() for d in args.device.split(",") if d.strip()]
    bad = [m for m in args.methods if m not in METHODS] + [t for t in args.tools if t not in TOOLS]
    if bad:
        p.error(f"unknown method/tool: {', '.join(bad)}")
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else [args.params]
    except ValueError:
        p.error(f"--sizes: {args.sizes!r}: give parameter counts (0.1e9) or hidden x layers (512x8)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table_out = args.table_out or args.workdir / "table.md"
    table_out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, flush=lambda b: table_out.write_text(report(b.results, b.args)))
    for size in args.sizes:
        bench.run_size(size)
    text = report(bench.results, args)
    table_out.write_text(text)
    print("\n" + text)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
